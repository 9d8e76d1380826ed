"""t-SNE of a model's penultimate-layer features, coloured by class, as the seed study plotted.

The features are the input of the output layer (``FC_3``): for the registry's
models the 256 activations of ``dense_1``. They are collected during the
evaluation's own prediction pass (:class:`FeatureCollector`), so the images are
read once. :func:`tsne_embedding` runs ``sklearn.manifold.TSNE`` (PCA
initialisation, automatic learning rate, fixed ``random_state``); the
perplexity is capped at ``(n - 1) / 3`` so that small test sets work.
:func:`write_tsne` writes the scatter plot (matplotlib object API, Agg canvas)
and the 2-D coordinates as CSV, both atomically.
"""
from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from common.fsutil import atomic_write_text
from data.labels import CLASSES

DEFAULT_PERPLEXITY = 50.0  # the seed study's t-SNE plots used perplexity 50
MIN_IMAGES = 4
TSNE_PNG = "tsne.png"
TSNE_CSV = "tsne.csv"
CLASS_COLOURS = {"normal": "tab:blue", "pneumonia": "tab:orange", "COVID-19": "tab:green"}


def penultimate_tensor(model: Any) -> Any:
    """The input of the output layer (``FC_3`` in the registry's models): the features t-SNE maps."""
    last = model.layers[-1]
    if last.output is not model.outputs[0]:
        raise ValueError(f"model {model.name!r}: cannot find the layer that produces its output")
    return last.input


class FeatureCollector:
    """Runs a Keras model once per batch and keeps its penultimate features beside the output.

    ``wrap(to_probabilities)`` returns a ``predict_batch`` function for
    ``evaluation.inference.predict_images``; the raw outputs go through
    ``to_probabilities`` (e.g. ``Predictor.to_probabilities``) as usual.
    """

    def __init__(self, model: Any) -> None:
        import keras

        features = penultimate_tensor(model)
        try:
            self._model = keras.Model(model.inputs, [features, model.outputs[0]])
        except Exception as exc:  # e.g. a subclassed model without a functional graph
            raise ValueError(f"cannot read the penultimate features of {model.name!r}: {exc}") from exc
        self._batches: list[np.ndarray] = []

    def wrap(
        self, to_probabilities: Callable[[np.ndarray], np.ndarray]
    ) -> Callable[[np.ndarray], np.ndarray]:
        """A ``predict_batch`` function that also records the features of every batch."""

        def predict_batch(images: np.ndarray) -> np.ndarray:
            features, outputs = self._model.predict_on_batch(np.asarray(images, dtype=np.float32))
            features = np.asarray(features, dtype=np.float64)
            self._batches.append(features.reshape(len(features), -1))
            return to_probabilities(np.asarray(outputs))

        return predict_batch

    @property
    def features(self) -> np.ndarray:
        """``[n, d]`` features of every image predicted so far, in order."""
        if not self._batches:
            return np.zeros((0, 0))
        return np.concatenate(self._batches, axis=0)


def effective_perplexity(n_images: int, perplexity: float) -> float:
    """``perplexity`` capped at ``(n - 1) / 3`` (t-SNE needs perplexity well below the sample count)."""
    if n_images < MIN_IMAGES:
        raise ValueError(f"--tsne needs at least {MIN_IMAGES} images, received a test list of {n_images}")
    if not perplexity > 0:
        raise ValueError(f"--tsne_perplexity must be > 0, received {perplexity}")
    return float(min(perplexity, (n_images - 1) / 3.0))


def tsne_embedding(
    features: np.ndarray, *, perplexity: float = DEFAULT_PERPLEXITY, seed: int = 0, max_iter: int = 1000
) -> np.ndarray:
    """2-D t-SNE coordinates ``[n, 2]`` of ``features`` ``[n, d]`` (seeded, PCA initialisation).

    ``max_iter`` is scikit-learn's default (1000); at least 250.
    """
    from sklearn.manifold import TSNE

    x = np.asarray(features, dtype=np.float64)
    perplexity = effective_perplexity(len(x), perplexity)
    tsne = TSNE(
        n_components=2,
        perplexity=perplexity,
        init="pca",
        learning_rate="auto",
        random_state=seed,
        max_iter=max_iter,
    )
    return tsne.fit_transform(x)


def tsne_figure(coords: np.ndarray, labels: Sequence[int], predicted: Sequence[int], *, title: str) -> Any:
    """Scatter plot: colour = true class; misclassified images drawn as crosses."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    labels = np.asarray(labels)
    wrong = np.asarray(predicted) != labels
    fig = Figure(figsize=(6.0, 5.0), layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    for k, name in enumerate(CLASSES):
        for mask, marker, suffix in ((~wrong, "o", ""), (wrong, "x", " (misclassified)")):
            sel = (labels == k) & mask
            if sel.any():
                ax.scatter(
                    coords[sel, 0],
                    coords[sel, 1],
                    s=14,
                    marker=marker,
                    c=CLASS_COLOURS[name],
                    alpha=0.8,
                    label=f"{name}{suffix} ({int(sel.sum())})",
                )
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_title(title)
    ax.legend(loc="best", fontsize="small")
    return fig


@dataclasses.dataclass(frozen=True)
class TsneResult:
    """What :func:`write_tsne` wrote."""

    png: Path
    csv: Path
    perplexity: float
    n_features: int

    def summary(self) -> str:
        """One line for the evaluation's output."""
        return f"t-SNE: {self.n_features} penultimate features, perplexity {self.perplexity:g}"


def write_tsne(
    out_dir: str | os.PathLike[str],
    *,
    features: np.ndarray,
    labels: Sequence[int],
    predicted: Sequence[int],
    filenames: Sequence[str],
    patient_ids: Sequence[str],
    perplexity: float = DEFAULT_PERPLEXITY,
    seed: int = 0,
) -> TsneResult:
    """Embed ``features`` with t-SNE and write ``tsne.png`` and ``tsne.csv`` into ``out_dir``.

    The CSV has one row per image: ``patient_id,filename,label,predicted,tsne_x,tsne_y``.
    """
    import pandas as pd

    from evaluation.plots import save_figure

    features = np.asarray(features, dtype=np.float64)
    n = len(features)
    if not n == len(labels) == len(predicted) == len(filenames) == len(patient_ids):
        raise ValueError(
            f"t-SNE: {n} feature rows, {len(labels)} labels, {len(predicted)} predictions, "
            f"{len(filenames)} file names and {len(patient_ids)} patient ids must match"
        )
    used = effective_perplexity(n, perplexity)
    coords = tsne_embedding(features, perplexity=used, seed=seed)
    out = Path(out_dir)
    frame = pd.DataFrame(
        {
            "patient_id": list(patient_ids),
            "filename": list(filenames),
            "label": [CLASSES[int(k)] for k in labels],
            "predicted": [CLASSES[int(k)] for k in predicted],
            "tsne_x": coords[:, 0],
            "tsne_y": coords[:, 1],
        }
    )
    csv_path = atomic_write_text(
        out / TSNE_CSV, frame.to_csv(index=False, float_format="%.6g", lineterminator="\n")
    )
    title = (
        f"t-SNE of penultimate-layer features ({n} images, {features.shape[1]} features, perplexity {used:g})"
    )
    png_path = save_figure(tsne_figure(coords, labels, predicted, title=title), out / TSNE_PNG)
    return TsneResult(png=png_path, csv=csv_path, perplexity=used, n_features=int(features.shape[1]))
