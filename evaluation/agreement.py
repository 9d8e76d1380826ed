"""Per-image agreement between two models: how far apart their probabilities are, and where.

Metrics and McNemar's test only look at whether each image is classified
correctly, so two models that are right on the same images look identical
there even when their probabilities differ, e.g. one model evaluated through
two preprocessings. For a pair of models on the same images this module
measures, with ``|dp|`` the absolute difference of one class probability on
one image:

- ``max_abs_diff``: the largest ``|dp|`` over all images and the three classes;
- ``mean_abs_diff``: the mean ``|dp|`` over all images and the three classes;
- ``argmax_disagreements``: the images whose predicted class (argmax) differs;
- the images that differ most: the :data:`TOP_IMAGES` images with the largest
  per-image ``max |dp|`` (over the classes), largest first, ties in image order;
  images with identical probabilities are never listed.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np
import pandas as pd

from data.labels import CLASSES
from evaluation.predictions import PROBABILITY_COLUMNS, Predictions

TOP_IMAGES = 10
AGREEMENT_COLUMNS: tuple[str, ...] = (
    "model_a", "model_b", "n_images", "max_abs_diff", "mean_abs_diff", "argmax_disagreements",
)
DISAGREEMENT_COLUMNS: tuple[str, ...] = (
    "model_a", "model_b", "rank", "filename", "patient_id", "label", "max_abs_diff", "predicted_a",
    "predicted_b", *(f"{c}_a" for c in PROBABILITY_COLUMNS), *(f"{c}_b" for c in PROBABILITY_COLUMNS),
)


@dataclasses.dataclass(frozen=True)
class Agreement:
    """How two models' probabilities on the same images differ (definitions: module docstring).

    ``most_different`` holds image indices, largest per-image difference first;
    ``image_diff`` the per-image ``max |dp|`` of every image.
    """

    model_a: str
    model_b: str
    n_images: int
    max_abs_diff: float
    mean_abs_diff: float
    argmax_disagreements: int
    most_different: tuple[int, ...]
    image_diff: np.ndarray


def pair_agreement(
    probabilities_a: np.ndarray,
    probabilities_b: np.ndarray,
    *,
    model_a: str,
    model_b: str,
    top: int = TOP_IMAGES,
) -> Agreement:
    """Agreement of two ``(n, 3)`` probability arrays whose rows are the same images, in the same order."""
    a = np.asarray(probabilities_a, dtype=np.float64)
    b = np.asarray(probabilities_b, dtype=np.float64)
    if a.shape != b.shape or a.ndim != 2 or a.shape[1] != len(CLASSES) or len(a) == 0:
        raise ValueError(
            f"{model_a} and {model_b}: probabilities must both have shape (n, {len(CLASSES)}) with n >= 1, "
            f"received {a.shape} and {b.shape}"
        )
    if top < 0:
        raise ValueError(f"top must be >= 0 images, received {top}")
    diff = np.abs(a - b)
    image_diff = diff.max(axis=1)
    order = np.argsort(-image_diff, kind="stable")[:top]
    return Agreement(
        model_a=model_a,
        model_b=model_b,
        n_images=len(a),
        max_abs_diff=float(diff.max()),
        mean_abs_diff=float(diff.mean()),
        argmax_disagreements=int(np.sum(np.argmax(a, axis=1) != np.argmax(b, axis=1))),
        most_different=tuple(int(i) for i in order if image_diff[i] > 0),
        image_diff=image_diff,
    )


def agreement_frame(agreements: Sequence[Agreement]) -> pd.DataFrame:
    """One row per pair: the columns of :data:`AGREEMENT_COLUMNS`."""
    rows = [{column: getattr(a, column) for column in AGREEMENT_COLUMNS} for a in agreements]
    return pd.DataFrame(rows, columns=list(AGREEMENT_COLUMNS))


def disagreements_frame(
    agreements: Sequence[Agreement], images: Predictions, probabilities: dict[str, np.ndarray]
) -> pd.DataFrame:
    """One row per listed image of each pair (:data:`DISAGREEMENT_COLUMNS`), largest difference first.

    ``images`` gives the file names, patient ids and labels of the rows; ``probabilities``
    each model's ``(n, 3)`` array by name, in the same row order.
    """
    rows = []
    for pair in agreements:
        a, b = probabilities[pair.model_a], probabilities[pair.model_b]
        for rank, i in enumerate(pair.most_different, start=1):
            rows.append(
                {
                    "model_a": pair.model_a,
                    "model_b": pair.model_b,
                    "rank": rank,
                    "filename": images.filenames[i],
                    "patient_id": images.patient_ids[i],
                    "label": CLASSES[images.labels[i]],
                    "max_abs_diff": pair.image_diff[i],
                    "predicted_a": CLASSES[int(np.argmax(a[i]))],
                    "predicted_b": CLASSES[int(np.argmax(b[i]))],
                    **{f"{c}_a": a[i, k] for k, c in enumerate(PROBABILITY_COLUMNS)},
                    **{f"{c}_b": b[i, k] for k, c in enumerate(PROBABILITY_COLUMNS)},
                }
            )
    return pd.DataFrame(rows, columns=list(DISAGREEMENT_COLUMNS))
