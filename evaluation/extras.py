"""What an evaluation can add beside the metrics: Grad-CAM overlays, a t-SNE plot, a timing.

``eval_keras.py`` resolves :class:`Extras` from its flags, checks them against
the checkpoint before any work (:func:`check_extras_fit`), and after the
metrics calls :func:`write_extras`, which runs each one asked for through its
own module (:mod:`evaluation.gradcam`, :mod:`evaluation.tsne`,
:mod:`evaluation.timing`) and returns one summary line and the files of each.
Importing this module imports none of them.
"""
from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # only for type hints: eval_keras.py imports this module before --help is answered
    import numpy as np

    from data.lists import ListEntry
    from evaluation.loaders import Predictor
    from evaluation.predictions import Predictions

GRADCAM_DIR = "gradcam"
# Grad-CAM holds a batch's feature maps and their gradients at once, so its batches are capped.
GRADCAM_MAX_BATCH = 16


@dataclasses.dataclass(frozen=True)
class Extras:
    """Which extras to write (0 / False / None: off).

    Attributes:
        gradcam: Grad-CAM overlays for the first N images of each class.
        gradcam_layer: the feature-map layer (None: the last one larger than 1 x 1).
        tsne: a t-SNE plot of the penultimate-layer features.
        tsne_perplexity: t-SNE perplexity.
        time_loop: time SURFsara's per-image loop against batched prediction on the first N images.
    """

    gradcam: int = 0
    gradcam_layer: str | None = None
    tsne: bool = False
    tsne_perplexity: float = 50.0
    time_loop: int = 0

    def keras_only(self) -> list[str]:
        """The flags asked for that need a Keras model (gradients and layer outputs)."""
        asked = (
            ("--gradcam", self.gradcam > 0),
            ("--tsne", self.tsne),
            ("--gradcam_layer", self.gradcam_layer is not None),
        )
        return [flag for flag, on in asked if on]


@dataclasses.dataclass(frozen=True)
class ExtrasResult:
    """One summary line per extra written, and the files by name (not Grad-CAM's overlays: their folder)."""

    notes: list[str]
    files: dict[str, Path]


def check_extras_fit(extras: Extras, *, checkpoint: str | os.PathLike[str]) -> None:
    """``ValueError`` when Grad-CAM or t-SNE is asked of a checkpoint that is not a Keras model."""
    from evaluation.loaders import KIND_NAMES, detect_kind, with_article

    kind = detect_kind(checkpoint)
    wanted = extras.keras_only()
    if wanted and kind in ("savedmodel", "onnx"):
        raise ValueError(
            f"{', '.join(wanted)}: needs a Keras model to take gradients and layer outputs from; checkpoint "
            f"{checkpoint} is {with_article(KIND_NAMES[kind])} (evaluate the Keras checkpoint it was "
            "exported from)"
        )


def write_extras(
    extras: Extras,
    *,
    predictor: Predictor,
    entries: Sequence[ListEntry],
    image_dir: str | os.PathLike[str],
    predictions: Predictions,
    features: np.ndarray | None,
    out_dir: str | os.PathLike[str],
    batch_size: int,
    seed: int,
) -> ExtrasResult:
    """Write the extras asked for into ``out_dir``.

    Args:
        extras: what to write.
        predictor: the loaded model (Grad-CAM and the timing resize as its ``preprocessing`` says).
        entries, image_dir: the evaluated list and its images.
        predictions: the evaluation's predictions, in ``entries`` order.
        features: the penultimate features collected while predicting (t-SNE), else None.
        out_dir: the evaluation's output folder.
        batch_size: the evaluation's batch size (Grad-CAM uses at most :data:`GRADCAM_MAX_BATCH`).
        seed: the t-SNE seed.
    """
    out = Path(out_dir)
    done: list[tuple[str, dict[str, Path]]] = []
    if extras.gradcam:
        done.append(_gradcam(extras, predictor, entries, image_dir, out / GRADCAM_DIR, batch_size))
    if extras.tsne:
        done.append(_tsne(extras, predictions, features, out, seed))
    if extras.time_loop:
        done.append(_timing(extras, predictor, entries, image_dir, out, batch_size))
    files = {name: path for _, written in done for name, path in written.items()}
    return ExtrasResult(notes=[note for note, _ in done], files=files)


def _gradcam(
    extras: Extras, predictor: Predictor, entries: Sequence[ListEntry], image_dir: str | os.PathLike[str],
    folder: Path, batch_size: int,
) -> tuple[str, dict[str, Path]]:
    from evaluation.gradcam import write_gradcam_overlays

    cam = write_gradcam_overlays(
        predictor.keras_model,
        entries,
        image_dir,
        folder,
        per_class=extras.gradcam,
        img_size=predictor.img_size,
        channels=predictor.channels,
        layer_name=extras.gradcam_layer,
        batch_size=min(batch_size, GRADCAM_MAX_BATCH),
        resize=predictor.preprocessing.resize,
    )
    return cam.summary(), {}  # the overlays have their own folder


def _tsne(
    extras: Extras, predictions: Predictions, features: np.ndarray | None, out: Path, seed: int
) -> tuple[str, dict[str, Path]]:
    from evaluation.tsne import write_tsne

    tsne = write_tsne(
        out,
        features=features,
        labels=predictions.labels,
        predicted=predictions.predicted,
        filenames=predictions.filenames,
        patient_ids=predictions.patient_ids,
        perplexity=extras.tsne_perplexity,
        seed=seed,
    )
    return tsne.summary(), {tsne.png.name: tsne.png, tsne.csv.name: tsne.csv}


def _timing(
    extras: Extras, predictor: Predictor, entries: Sequence[ListEntry], image_dir: str | os.PathLike[str],
    out: Path, batch_size: int,
) -> tuple[str, dict[str, Path]]:
    from data.pipeline import image_paths
    from evaluation.timing import TIMING_JSON, time_evaluation

    timing = time_evaluation(
        predictor.predict_batch,
        image_paths(entries[: extras.time_loop], image_dir),
        img_size=predictor.img_size,
        channels=predictor.channels,
        batch_size=batch_size,
        keras_model=predictor.keras_model,
        resize=predictor.preprocessing.resize,
    )
    return timing.summary(), {TIMING_JSON: timing.write_json(out / TIMING_JSON)}
