"""The three COVIDx classes, in the order every model output and metric uses."""
from __future__ import annotations

CLASSES: tuple[str, ...] = ("normal", "pneumonia", "COVID-19")
CLASS_TO_INDEX: dict[str, int] = {name: i for i, name in enumerate(CLASSES)}
NUM_CLASSES = len(CLASSES)

# SURFsara's train_keras.py: COVID-19 errors cost 25x (the class is ~1.4% of the train list).
SURFSARA_CLASS_WEIGHTS: dict[int, float] = {0: 1.0, 1: 1.0, 2: 25.0}


def class_index(label: str) -> int:
    """Index of ``label`` in :data:`CLASSES`; ``ValueError`` naming the allowed labels otherwise."""
    try:
        return CLASS_TO_INDEX[label]
    except KeyError:
        raise ValueError(
            f"unknown label {label!r}: allowed labels are {', '.join(CLASSES)}"
        ) from None
