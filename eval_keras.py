#!/usr/bin/env python3
"""Evaluate a trained model on a COVIDx test list: SURFsara's report lines plus confidence intervals.

    python eval_keras.py --checkpoint PATH --testfile test_COVIDx.txt --data_path DIR [--img_size N]

PATH may be any of:

- a full-model .hdf5/.h5 (final_model.hdf5, or --full_checkpoints epochs);
- a weights-only .hdf5 as SURFsara saved them (cp-EE-LOSS.hdf5) or a Keras 3
  .weights.h5: the architecture comes from run_config.json in the same folder,
  or from --model/--img_size/--head/--channels;
- a SavedModel folder (its serving_default signature);
- a .keras archive;
- an .onnx model, run with onnxruntime (e.g. a PyTorch model exported with
  torch.onnx.export, NCHW or NHWC, probabilities or logits).

Every kind goes through the same list reading (images in DATA_PATH/test, or
--image_dir: DATA_PATH/train for a validation list), preprocessing
(resize to the model's input size with the method it was trained with, / 255)
and metrics. Prints the confusion
matrix, SURFsara's "Sens ..." and "PPV ..." lines, then accuracy, per-class
precision/recall/F1, macro F1 and one-vs-rest ROC AUC with patient-level
bootstrap confidence intervals, and writes metrics.json, predictions.csv,
confusion_matrix.png and roc_curves.png to --out (default: <checkpoint
name>_eval/ beside the checkpoint). --gradcam N adds Grad-CAM overlays,
--tsne a t-SNE plot of the penultimate features (Keras kinds only).
See docs/evaluation.md.
"""
from __future__ import annotations

import argparse
import dataclasses
import logging
import re
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from common.cli import (
    EXIT_OK,
    DefaultsHelpFormatter,
    check_output_dir,
    handle_errors,
    non_negative_int,
    positive_int,
    setup_logging,
)
from data.images import RESIZE_METHODS
from data.lists import VERIFY_MODES, ListEntry
from evaluation.arguments import add_architecture_arguments
from evaluation.extras import GRADCAM_DIR, Extras
from evaluation.preprocessing import RESIZE_HELP

if TYPE_CHECKING:  # heavy imports happen in main(), after --help is answered
    import numpy as np
    import tensorflow as tf

    from evaluation.loaders import Predictor
    from evaluation.predictions import Predictions

log = logging.getLogger("eval_keras")


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Command-line arguments of ``eval_keras.py``."""
    parser = argparse.ArgumentParser(
        prog="eval_keras.py", description=__doc__, formatter_class=DefaultsHelpFormatter
    )
    _add_model_arguments(parser)
    add_architecture_arguments(parser)
    _add_evaluation_arguments(parser)
    _add_explanation_arguments(parser)
    _add_output_arguments(parser)
    return parser.parse_args(argv)


def _add_model_arguments(parser: argparse.ArgumentParser) -> None:
    base = parser.add_argument_group("model and test list (SURFsara's flag names)")
    base.add_argument(
        "--checkpoint",
        required=True,
        default=argparse.SUPPRESS,
        metavar="PATH",
        help="model to evaluate: .hdf5/.h5 (full model or weights), .weights.h5, .keras, "
        "SavedModel folder or .onnx",
    )
    base.add_argument("--testfile", default="test_COVIDx.txt", help="test list file")
    base.add_argument("--data_path", default="data", help="folder holding the test/ image folder")
    base.add_argument(
        "--image_dir",
        default=argparse.SUPPRESS,
        metavar="DIR",
        help="folder of the list's images (default: DATA_PATH/test); DATA_PATH/train for a "
        "validation list such as val_COVIDx.txt, whose images are training data, e.g. "
        "to write the validation predictions compare.py --weights-from needs",
    )
    base.add_argument(
        "--img_size",
        type=positive_int,
        default=argparse.SUPPRESS,
        metavar="N",
        help="square image size (default: the model's input size; must agree with it when the "
        "model's size is fixed; 512 for a weights-only file without run_config.json)",
    )
    base.add_argument("--resize", choices=RESIZE_METHODS, default=argparse.SUPPRESS, help=RESIZE_HELP)


def _add_evaluation_arguments(parser: argparse.ArgumentParser) -> None:
    ev = parser.add_argument_group("evaluation")
    ev.add_argument("--batch_size", type=positive_int, default=32, help="images per prediction batch")
    ev.add_argument(
        "--verify_images",
        choices=VERIFY_MODES,
        default="header",
        help="check the test images before predicting: header (exists, looks like an image), "
        "full (decode all), none",
    )
    ev.add_argument(
        "--n_bootstrap",
        "--n-bootstrap",
        dest="n_bootstrap",
        type=non_negative_int,
        default=2000,
        help="patient resamples for the confidence intervals (0: no intervals)",
    )
    ev.add_argument("--confidence", type=float, default=0.95, help="confidence interval level")
    ev.add_argument("--seed", type=int, default=0, help="seed of the bootstrap resampling and of t-SNE")
    ev.add_argument(
        "--time_loop",
        type=non_negative_int,
        default=0,
        metavar="N",
        help="also time SURFsara's per-image loop (cv2 + model.predict per image) against batched "
        "prediction on the first N test images; writes timing.json (0: off)",
    )


def _add_explanation_arguments(parser: argparse.ArgumentParser) -> None:
    expl = parser.add_argument_group("explanations (Keras kinds only)")
    expl.add_argument(
        "--gradcam",
        type=non_negative_int,
        default=0,
        metavar="N",
        help="write Grad-CAM overlays for the first N test images of each class to OUT/gradcam/",
    )
    expl.add_argument(
        "--gradcam_layer",
        default=argparse.SUPPRESS,
        metavar="NAME",
        help="feature-map layer for Grad-CAM (default: the last convolutional feature map larger than 1x1)",
    )
    expl.add_argument(
        "--tsne",
        action="store_true",
        help="write a t-SNE plot (tsne.png) and the 2-D coordinates (tsne.csv) of the "
        "penultimate-layer features, coloured by class",
    )
    expl.add_argument(
        "--tsne_perplexity", type=float, default=50.0, help="t-SNE perplexity (capped at (images - 1) / 3)"
    )


def _add_output_arguments(parser: argparse.ArgumentParser) -> None:
    out = parser.add_argument_group("output")
    out.add_argument(
        "--out",
        default=argparse.SUPPRESS,
        metavar="DIR",
        help="output folder (default: <checkpoint name>_eval/ beside the checkpoint, e.g. "
        "output/run/cp-10-0.35_eval/)",
    )
    out.add_argument("-v", "--verbose", action="count", default=0, help="debug logging")


def default_out_dir(checkpoint: str | Path) -> Path:
    """``<checkpoint name without extension>_eval`` beside the checkpoint (SavedModel: beside the folder)."""
    path = Path(checkpoint)
    if path.name == "saved_model.pb":
        path = path.parent
    name = path.name
    for suffix in (".weights.h5", ".hdf5", ".h5", ".keras", ".onnx"):
        if name.lower().endswith(suffix) and len(name) > len(suffix):
            name = name[: -len(suffix)]
            break
    return path.parent / f"{name}_eval"


@dataclasses.dataclass(frozen=True)
class Settings:
    """Everything the command line says, resolved and checked once (only :func:`main` sees ``args``)."""

    checkpoint: Path
    architecture: dict[str, Any]  # load_predictor's model, img_size, head, channels (None: not given)
    resize: str | None  # None: what the checkpoint records
    testfile: str
    image_dir: Path
    image_dir_given: bool
    out_dir: Path
    batch_size: int
    verify_images: str
    n_bootstrap: int
    confidence: float
    seed: int
    extras: Extras


def resolve_settings(args: argparse.Namespace) -> Settings:
    """:class:`Settings` from the parsed arguments; ``ValueError`` for flags that contradict each other."""
    if not 0.0 < args.confidence < 1.0:
        raise ValueError(f"--confidence must be between 0 and 1 (e.g. 0.95), received {args.confidence}")
    if hasattr(args, "gradcam_layer") and not args.gradcam:
        raise ValueError(
            f"--gradcam_layer {args.gradcam_layer} needs --gradcam N (the number of images per class to "
            f"explain), received --gradcam {args.gradcam}"
        )
    checkpoint = Path(args.checkpoint)
    out_flag = "--out" if hasattr(args, "out") else "--out (default: beside --checkpoint)"
    return Settings(
        checkpoint=checkpoint,
        architecture={key: getattr(args, key, None) for key in ("model", "img_size", "head", "channels")},
        resize=getattr(args, "resize", None),
        testfile=args.testfile,
        image_dir=Path(getattr(args, "image_dir", None) or Path(args.data_path) / "test"),
        image_dir_given=hasattr(args, "image_dir"),
        out_dir=check_output_dir(getattr(args, "out", None) or default_out_dir(checkpoint), flag=out_flag),
        batch_size=args.batch_size,
        verify_images=args.verify_images,
        n_bootstrap=args.n_bootstrap,
        confidence=args.confidence,
        seed=args.seed,
        extras=Extras(
            gradcam=args.gradcam,
            gradcam_layer=getattr(args, "gradcam_layer", None),
            tsne=args.tsne,
            tsne_perplexity=args.tsne_perplexity,
            time_loop=args.time_loop,
        ),
    )


@dataclasses.dataclass(frozen=True)
class EvaluationList:
    """The list's entries, where their images are, and the fingerprint of both."""

    testfile: str
    image_dir: Path
    entries: list[ListEntry]
    fingerprint: str


def read_test_list(testfile: str, image_dir: Path, *, image_dir_given: bool, verify: str) -> EvaluationList:
    """Read and check the whole list (before any model is built) and fingerprint it."""
    from data.fingerprint import fingerprint_list_files
    from data.pipeline import load_entries

    if image_dir_given and not image_dir.is_dir():
        raise FileNotFoundError(
            f"--image_dir {image_dir} is not a folder (it holds the images of --testfile {testfile})"
        )
    entries = load_entries(testfile, image_dir, verify=verify, what="--testfile")
    # SHA256SUMS is in the dataset folder (create_covidx.py --out), the parent of DATA_PATH/test.
    fingerprint, _ = fingerprint_list_files(entries, image_dir, dataset_dir=image_dir.parent)
    return EvaluationList(
        testfile=testfile, image_dir=image_dir, entries=list(entries), fingerprint=fingerprint
    )


def _without_op_decorations(text: str) -> str:
    """A TensorFlow error message without ``{{function_node ...}}`` and `` [Op:DecodeImage] name:``."""
    text = re.sub(r"\{\{function_node [^}]*\}\}\s*", "", text)
    return re.sub(r"\s*\[Op:\w+\](\s*name:\s*)?", "", text).strip()


def _unreadable_image(exc: tf.errors.OpError, test: EvaluationList, *, verified: str) -> ValueError:
    """The one-line error for a decoding failure during prediction, naming the culprit files."""
    from data.pipeline import find_image_problems

    message = _without_op_decorations(exc.message)
    first = message.splitlines()[0] if message else type(exc).__name__
    # tf.data does not say which file failed; decoding them all is only paid on this error path
    # (and not at all when every file was already decoded before predicting).
    culprits = [] if verified == "full" else find_image_problems(test.entries, test.image_dir, verify="full")
    named = "; ".join(
        f"{test.image_dir / e.filename}: {_without_op_decorations(reason)}" for e, reason in culprits[:3]
    ) + (f" (and {len(culprits) - 3} more)" if len(culprits) > 3 else "")
    hint = f": {named}" if named else ""
    return ValueError(
        f"--testfile {test.testfile}: an image in {test.image_dir} could not be read or decoded "
        f"({first}){hint}"
    )


def predict_list(
    predict_batch: Callable[[np.ndarray], np.ndarray],
    test: EvaluationList,
    *,
    img_size: int,
    channels: int,
    batch_size: int,
    resize: str,
    verified: str,
) -> tuple[np.ndarray, float]:
    """``(probabilities, seconds)`` of the whole list through the one prediction path."""
    import tensorflow as tf

    from evaluation.inference import predict_images

    start = time.perf_counter()
    try:
        probabilities = predict_images(
            predict_batch, test.entries, test.image_dir, img_size=img_size, channels=channels,
            batch_size=batch_size, resize=resize,
        )
    except tf.errors.OpError as exc:
        raise _unreadable_image(exc, test, verified=verified) from None
    return probabilities, time.perf_counter() - start


def evaluate(
    predictions: Predictions, predictor: Predictor, test: EvaluationList, settings: Settings
) -> dict[str, Any]:
    """``metrics.json``'s content: the metrics with intervals and what was evaluated."""
    from evaluation.report import evaluate_predictions

    metrics = evaluate_predictions(
        labels=predictions.labels,
        probabilities=predictions.probabilities,
        patient_ids=predictions.patient_ids,
        n_bootstrap=settings.n_bootstrap,
        seed=settings.seed,
        confidence=settings.confidence,
    )
    metrics["evaluated"] = {
        "checkpoint": str(settings.checkpoint),
        "kind": predictor.kind,
        "description": predictor.description,
        "model_output": predictor.output,
        "img_size": predictor.img_size,
        "channels": predictor.channels,
        "testfile": str(test.testfile),
        "testfile_fingerprint": test.fingerprint,
        "image_dir": str(test.image_dir),
    }
    metrics["preprocessing"] = predictor.preprocessing.to_dict()
    return metrics


def print_summary(
    settings: Settings,
    *,
    predictor: Predictor,
    test: EvaluationList,
    seconds: float,
    notes: Sequence[str],
    written: dict[str, Path],
    metrics: dict[str, Any],
) -> None:
    """What was evaluated, how fast, the files written, then the report (ends with the disclaimer)."""
    from data.fingerprint import short
    from evaluation.report import format_report

    n, out_dir = len(test.entries), settings.out_dir
    print(
        f"Checkpoint: {settings.checkpoint}\n  {predictor.description}"
        + ("; logits, softmax applied" if predictor.output == "logits" else "")
    )
    print(f"Preprocessing: {predictor.preprocessing.describe()}")
    print(
        f"Test list: {test.testfile}: {n} images from {test.image_dir}, fingerprint {short(test.fingerprint)}"
    )
    print(
        f"Batched prediction: {n} images in {seconds:.1f} s "
        f"({n / seconds if seconds > 0 else 0:.1f} images/s incl. start-up, batch {settings.batch_size})"
    )
    for note in notes:
        print(note)
    print(f"Wrote to {out_dir}: {', '.join(sorted(written))}")
    if settings.extras.gradcam:
        print(f"  and {out_dir / GRADCAM_DIR}/")
    print()
    print(format_report(metrics))  # ends with the research-use disclaimer


@handle_errors
def main(argv: Sequence[str] | None = None) -> int:
    """Evaluate the checkpoint on the test list; returns the exit code."""
    args = parse_args(argv)
    setup_logging(args.verbose)
    settings = resolve_settings(args)
    # Heavy imports after argument parsing, so --help is instant.
    from evaluation.extras import check_extras_fit, write_extras
    from evaluation.inference import entries_predictions
    from evaluation.loaders import load_predictor
    from evaluation.report import write_evaluation_files

    # The cheap checks first: the checkpoint's kind and the whole list, before any model is built.
    check_extras_fit(settings.extras, checkpoint=settings.checkpoint)
    test = read_test_list(
        settings.testfile, settings.image_dir, image_dir_given=settings.image_dir_given,
        verify=settings.verify_images,
    )
    predictor = load_predictor(settings.checkpoint, **settings.architecture, resize=settings.resize)
    log.info("loaded %s", predictor.description)

    predict_batch, collector = predictor.predict_batch, None
    if settings.extras.tsne:  # the penultimate features are collected during the one prediction pass
        from evaluation.tsne import FeatureCollector

        collector = FeatureCollector(predictor.keras_model)
        predict_batch = collector.wrap(predictor.to_probabilities)
    probabilities, seconds = predict_list(
        predict_batch, test, img_size=predictor.img_size, channels=predictor.channels,
        batch_size=settings.batch_size, resize=predictor.preprocessing.resize,
        verified=settings.verify_images,
    )
    predictions = entries_predictions(test.entries, probabilities, source=str(test.testfile))

    metrics = evaluate(predictions, predictor, test, settings)
    written = dict(write_evaluation_files(settings.out_dir, predictions=predictions, metrics=metrics))
    extras = write_extras(
        settings.extras, predictor=predictor, entries=test.entries, image_dir=test.image_dir,
        predictions=predictions, features=collector.features if collector else None,
        out_dir=settings.out_dir, batch_size=settings.batch_size, seed=settings.seed,
    )
    print_summary(
        settings, predictor=predictor, test=test, seconds=seconds, notes=extras.notes,
        written={**written, **extras.files}, metrics=metrics,
    )
    return EXIT_OK


if __name__ == "__main__":
    raise SystemExit(main())
