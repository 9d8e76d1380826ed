"""Batched prediction over a COVIDx list, through the training pipeline's preprocessing."""
from __future__ import annotations

import math
import os
import sys
from collections.abc import Callable, Sequence

import numpy as np
from tqdm import tqdm

from data.lists import ListEntry
from data.pipeline import AUTOTUNE, ImageSource, as_image_source
from evaluation.predictions import Predictions, make_predictions


def predict_images(
    predict_batch: Callable[[np.ndarray], np.ndarray],
    entries: Sequence[ListEntry],
    images: str | os.PathLike[str] | ImageSource,
    *,
    img_size: int,
    channels: int = 3,
    batch_size: int = 32,
    resize: str = "baseline",
    progress: bool | None = None,
) -> np.ndarray:
    """Class probabilities ``(len(entries), 3)`` in the order of ``entries``, batch by batch.

    The one prediction path of eval_keras.py, predict.py's lists and
    train_keras.py's final evaluation. ``images`` is the entries' folder or an
    image source (``data.pipeline.FileImages`` or ``CachedImages``): every
    source yields ``(image, filename)`` pairs through the training pipeline's
    preprocessing, a cache in its own order, so the result is gathered by file
    name. ``predict_batch`` maps a float32 ``[n, img_size, img_size,
    channels]`` batch in [0, 1] to ``[n, 3]`` probabilities: a Keras model's
    ``predict_on_batch``, a SavedModel signature or an ONNX session all fit.
    ``resize`` is the resize method (``data.images.RESIZE_METHODS``), the one
    the model was trained with (``Predictor.preprocessing.resize``).
    ``progress``: a progress bar on stderr (None: only when stderr is a
    terminal, so logs and batch jobs stay clean).
    """
    if not entries:
        return np.zeros((0, 3))
    ds = as_image_source(images).named(entries, img_size=img_size, channels=channels, resize=resize)
    by_name: dict[str, np.ndarray] = {}
    with progress_bar(len(entries), progress=progress, desc="predicting") as bar:
        for batch, names in ds.batch(batch_size).prefetch(AUTOTUNE):
            probabilities = np.asarray(predict_batch(batch.numpy()), dtype=np.float64)
            by_name.update(zip((n.decode("utf8") for n in names.numpy()), probabilities))
            bar.update(len(probabilities))
    return np.stack([by_name[e.filename] for e in entries])


def progress_bar(total: int, *, progress: bool | None, desc: str) -> tqdm:
    """A tqdm bar over ``total`` images on stderr; ``progress=None`` shows it only on a terminal."""
    show = sys.stderr.isatty() if progress is None else progress
    return tqdm(total=total, unit="img", desc=desc, disable=not show, file=sys.stderr, dynamic_ncols=True,
                miniters=max(1, math.ceil(total / 100)))


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
