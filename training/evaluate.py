"""The final test evaluation of a training run (SURFsara's script ended with it).

SURFsara's ``train_keras.py`` ended with a per-image predict loop over the
test list; here the same report comes from one batched prediction path
(:func:`evaluation.inference.predict_images`) and is written into the run
folder's ``test_evaluation/``.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import keras

from training.trainer import TrainResult

EVALUATION_FOLDER = "test_evaluation"


@dataclasses.dataclass(frozen=True)
class FinalEvaluation:
    """The metrics of the final model on the test list and where they were written."""

    metrics: dict[str, Any]
    folder: Path


def evaluate_final_model(
    result: TrainResult,
    *,
    testfile: str,
    testfile_fingerprint: str | None,
    batch_size: int,
    n_bootstrap: int,
    seed: int,
    resize: str = "baseline",
) -> FinalEvaluation:
    """Predict the test list with ``result``'s final model, compute the metrics and write them.

    ``testfile_fingerprint`` (data/fingerprint.py; None when it could not be
    computed) is recorded beside the metrics so that they name the data they
    mean. Predictions run in batches of at least 32 (or ``batch_size``), with
    the images resized as in training (``resize``).
    """
    from evaluation.inference import entries_predictions, predict_images
    from evaluation.report import evaluate_predictions, write_evaluation_files

    model = keras.models.load_model(result.final_model, compile=False)
    _, img_size, _, channels = model.input_shape
    probabilities = predict_images(
        model.predict_on_batch,
        result.test_entries,
        result.test_images,
        img_size=img_size,
        channels=channels,
        batch_size=max(batch_size, 32),
        resize=resize,
    )
    predictions = entries_predictions(result.test_entries, probabilities, source=testfile)
    metrics = evaluate_predictions(
        labels=predictions.labels,
        probabilities=predictions.probabilities,
        patient_ids=predictions.patient_ids,
        n_bootstrap=n_bootstrap,
        seed=seed,
    )
    if testfile_fingerprint is not None:
        metrics["evaluated"] = {"testfile": testfile, "testfile_fingerprint": testfile_fingerprint}
    # As eval_keras.py records it, so the two metrics.json files of one model say the same.
    metrics["preprocessing"] = {"resize": resize, "source": "the run's --resize"}
    folder = result.run_dir / EVALUATION_FOLDER
    write_evaluation_files(folder, predictions=predictions, metrics=metrics)
    return FinalEvaluation(metrics=metrics, folder=folder)
