"""Batched prediction over a COVIDx list, through the training pipeline's preprocessing."""
from __future__ import annotations

import math
import os
import sys
from collections.abc import Callable, Sequence

import numpy as np
from tqdm import tqdm

from data.lists import ListEntry
from data.pipeline import CachedImages, image_paths, make_predict_dataset
from evaluation.predictions import Predictions, make_predictions


def predict_entries(
    predict_batch: Callable[[np.ndarray], np.ndarray],
    entries: Sequence[ListEntry],
    image_dir: str | os.PathLike[str],
    *,
    img_size: int,
    channels: int = 3,
    batch_size: int = 32,
    progress: bool | None = None,
) -> np.ndarray:
    """Class probabilities ``(len(entries), 3)`` from ``predict_batch`` applied batch by batch.

    ``predict_batch`` maps a float32 ``[n, img_size, img_size, channels]`` batch
    in [0, 1] to ``[n, 3]`` probabilities: a Keras model's ``predict_on_batch``,
    a SavedModel signature or an ONNX session all fit, so every kind of model
    is evaluated through the same reading and preprocessing. ``progress``: a
    progress bar on stderr (None: only when stderr is a terminal, so logs and
    batch jobs stay clean).
    """
    ds = make_predict_dataset(image_paths(entries, image_dir), img_size=img_size, batch_size=batch_size,
                              channels=channels)
    outputs = []
    with progress_bar(len(entries), progress=progress, desc="predicting") as bar:
        for batch in ds:
            outputs.append(np.asarray(predict_batch(batch.numpy()), dtype=np.float64))
            bar.update(len(outputs[-1]))
    if not outputs:
        return np.zeros((0, 3))
    return np.concatenate(outputs, axis=0)


def progress_bar(total: int, *, progress: bool | None, desc: str) -> tqdm:
    """A tqdm bar over ``total`` images on stderr; ``progress=None`` shows it only on a terminal."""
    show = sys.stderr.isatty() if progress is None else progress
    return tqdm(total=total, unit="img", desc=desc, disable=not show, file=sys.stderr, dynamic_ncols=True,
                miniters=max(1, math.ceil(total / 100)))


def predict_cached(
    predict_batch: Callable[[np.ndarray], np.ndarray],
    entries: Sequence[ListEntry],
    images: CachedImages,
    *,
    img_size: int,
    channels: int = 3,
    batch_size: int = 32,
) -> np.ndarray:
    """Like :func:`predict_entries`, reading the images from a ``data.cache`` cache.

    The cache yields images in its own order; the probabilities are returned in
    the order of ``entries``.
    """
    by_name: dict[str, np.ndarray] = {}
    for batch, names in images.named(entries, img_size=img_size, channels=channels).batch(batch_size):
        probabilities = np.asarray(predict_batch(batch.numpy()), dtype=np.float64)
        for name, p in zip(names.numpy(), probabilities):
            by_name[name.decode("utf8")] = p
    return np.stack([by_name[e.filename] for e in entries]) if entries else np.zeros((0, 3))


def entries_predictions(
    entries: Sequence[ListEntry], probabilities: np.ndarray, *, source: str
) -> Predictions:
    """Wrap a list's entries and their probabilities into validated :class:`Predictions`.

    The patient id written is :attr:`ListEntry.patient_key` (``source:id`` when the
    list names sources), because sources reuse ids and the bootstrap groups by it.
    """
    return make_predictions(
        patient_ids=[e.patient_key for e in entries],
        filenames=[e.filename for e in entries],
        labels=[e.label for e in entries],
        probabilities=probabilities,
        source=source,
    )
