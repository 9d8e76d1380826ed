"""The three COVIDx classes, in the order every model output and metric uses."""
from __future__ import annotations

CLASSES: tuple[str, ...] = ("normal", "pneumonia", "COVID-19")
CLASS_TO_INDEX: dict[str, int] = {name: i for i, name in enumerate(CLASSES)}
NUM_CLASSES = len(CLASSES)
