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
(resize to the model's input size, / 255) and metrics. Prints the confusion
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
import json
import logging
import re
import time
from collections.abc import Sequence
from pathlib import Path

from common.cli import (
    EXIT_OK,
    DefaultsHelpFormatter,
    check_output_dir,
    handle_errors,
    non_negative_int,
    positive_int,
    setup_logging,
)
from common.fsutil import atomic_write_text
from data.lists import VERIFY_MODES

log = logging.getLogger("eval_keras")


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Command-line arguments of ``eval_keras.py``."""
    parser = argparse.ArgumentParser(
        prog="eval_keras.py", description=__doc__, formatter_class=DefaultsHelpFormatter
    )
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

    arch = parser.add_argument_group(
        "architecture of a weights-only checkpoint",
        "Only used when there is no run_config.json beside the weights file (with one, they may be "
        "given only if they agree with it).",
    )
    arch.add_argument(
        "--model",
        default=argparse.SUPPRESS,
        help="registry model name, e.g. resnet50v2 (SURFsara's baseline); required for a "
        "weights-only file without run_config.json",
    )
    arch.add_argument(
        "--head",
        choices=["flatten", "avg", "max"],
        default=argparse.SUPPRESS,
        help="pooling before the dense head (default: flatten, SURFsara's)",
    )
    arch.add_argument(
        "--channels",
        type=int,
        choices=[1, 3],
        default=argparse.SUPPRESS,
        help="image channels of the model input (default: 3)",
    )

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

    out = parser.add_argument_group("output")
    out.add_argument(
        "--out",
        default=argparse.SUPPRESS,
        metavar="DIR",
        help="output folder (default: <checkpoint name>_eval/ beside the checkpoint, e.g. "
        "output/run/cp-10-0.35_eval/)",
    )
    out.add_argument("-v", "--verbose", action="count", default=0, help="debug logging")
    return parser.parse_args(argv)


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


def _without_op_decorations(text: str) -> str:
    """A TensorFlow error message without ``{{function_node ...}}`` and `` [Op:DecodeImage] name:``."""
    text = re.sub(r"\{\{function_node [^}]*\}\}\s*", "", text)
    return re.sub(r"\s*\[Op:\w+\](\s*name:\s*)?", "", text).strip()


@handle_errors
def main(argv: Sequence[str] | None = None) -> int:
    """Evaluate the checkpoint on the test list; returns the exit code."""
    args = parse_args(argv)
    setup_logging(args.verbose)
    if not 0.0 < args.confidence < 1.0:
        raise ValueError(f"--confidence must be between 0 and 1 (e.g. 0.95), received {args.confidence}")
    if hasattr(args, "gradcam_layer") and not args.gradcam:
        raise ValueError("--gradcam_layer needs --gradcam N (the number of images per class to explain)")
    checkpoint = Path(args.checkpoint)
    out_flag = "--out" if hasattr(args, "out") else "--out (default: beside --checkpoint)"
    out_dir = check_output_dir(getattr(args, "out", None) or default_out_dir(checkpoint), flag=out_flag)
    # Heavy imports after argument parsing, so --help is instant.
    import tensorflow as tf

    from data.pipeline import find_image_problems, image_paths, load_entries
    from evaluation.inference import entries_predictions, predict_images
    from evaluation.loaders import KIND_NAMES, detect_kind, load_predictor, with_article
    from evaluation.report import evaluate_predictions, format_report, write_evaluation_files

    # The cheap checks first: the checkpoint's kind and the whole list, before any model is built.
    kind = detect_kind(checkpoint)
    wanted = [
        flag
        for flag, on in (
            ("--gradcam", args.gradcam > 0),
            ("--tsne", args.tsne),
            ("--gradcam_layer", hasattr(args, "gradcam_layer")),
        )
        if on
    ]
    if wanted and kind in ("savedmodel", "onnx"):
        raise ValueError(
            f"{', '.join(wanted)}: needs a Keras model to take gradients and layer outputs from; checkpoint "
            f"{checkpoint} is {with_article(KIND_NAMES[kind])} (evaluate the Keras checkpoint it was "
            "exported from)"
        )
    image_dir = Path(getattr(args, "image_dir", None) or Path(args.data_path) / "test")
    if hasattr(args, "image_dir") and not image_dir.is_dir():
        raise FileNotFoundError(
            f"--image_dir {image_dir} is not a folder (it holds the images of --testfile {args.testfile})"
        )
    entries = load_entries(args.testfile, image_dir, verify=args.verify_images, what="--testfile")
    from data.fingerprint import fingerprint_list_files, short

    # SHA256SUMS is in the dataset folder (create_covidx.py --out), the parent of DATA_PATH/test.
    fingerprint, _ = fingerprint_list_files(entries, image_dir, dataset_dir=image_dir.parent)

    predictor = load_predictor(
        checkpoint,
        model=getattr(args, "model", None),
        img_size=getattr(args, "img_size", None),
        head=getattr(args, "head", None),
        channels=getattr(args, "channels", None),
    )
    log.info("loaded %s", predictor.description)
    collector = None
    predict_batch = predictor.predict_batch
    if args.tsne:
        from evaluation.tsne import FeatureCollector

        collector = FeatureCollector(predictor.keras_model)
        predict_batch = collector.wrap(predictor.to_probabilities)

    start = time.perf_counter()
    try:
        probabilities = predict_images(
            predict_batch,
            entries,
            image_dir,
            img_size=predictor.img_size,
            channels=predictor.channels,
            batch_size=args.batch_size,
        )
    except tf.errors.OpError as exc:
        message = _without_op_decorations(exc.message)
        first = message.splitlines()[0] if message else type(exc).__name__
        # tf.data does not say which file failed; decoding them all is only paid on this error path.
        checked = args.verify_images == "full"  # then every file decoded before; nothing more to find
        culprits = [] if checked else find_image_problems(entries, image_dir, verify="full")
        named = "; ".join(
            f"{image_dir / e.filename}: {_without_op_decorations(reason)}" for e, reason in culprits[:3]
        ) + (f" (and {len(culprits) - 3} more)" if len(culprits) > 3 else "")
        hint = f": {named}" if named else ""
        raise ValueError(
            f"--testfile {args.testfile}: an image in {image_dir} could not be read or decoded "
            f"({first}){hint}"
        ) from None
    seconds = time.perf_counter() - start

    predictions = entries_predictions(entries, probabilities, source=str(args.testfile))
    metrics = evaluate_predictions(
        labels=predictions.labels,
        probabilities=predictions.probabilities,
        patient_ids=predictions.patient_ids,
        n_bootstrap=args.n_bootstrap,
        seed=args.seed,
        confidence=args.confidence,
    )
    metrics["evaluated"] = {
        "checkpoint": str(checkpoint),
        "kind": predictor.kind,
        "description": predictor.description,
        "model_output": predictor.output,
        "img_size": predictor.img_size,
        "channels": predictor.channels,
        "testfile": str(args.testfile),
        "testfile_fingerprint": fingerprint,
        "image_dir": str(image_dir),
    }
    written = dict(write_evaluation_files(out_dir, predictions=predictions, metrics=metrics))

    notes = []
    if args.gradcam:
        from evaluation.gradcam import write_gradcam_overlays

        cam = write_gradcam_overlays(
            predictor.keras_model,
            entries,
            image_dir,
            out_dir / "gradcam",
            per_class=args.gradcam,
            img_size=predictor.img_size,
            channels=predictor.channels,
            layer_name=getattr(args, "gradcam_layer", None),
            batch_size=min(args.batch_size, 16),
        )
        notes.append(
            f"Grad-CAM: {len(cam.paths)} overlays in {out_dir / 'gradcam'} "
            f"(layer {cam.layer}, score: predicted class {cam.score})"
        )
    if collector is not None:
        from evaluation.tsne import write_tsne

        tsne = write_tsne(
            out_dir,
            features=collector.features,
            labels=predictions.labels,
            predicted=predictions.predicted,
            filenames=predictions.filenames,
            patient_ids=predictions.patient_ids,
            perplexity=args.tsne_perplexity,
            seed=args.seed,
        )
        written.update({tsne.png.name: tsne.png, tsne.csv.name: tsne.csv})
        notes.append(f"t-SNE: {tsne.n_features} penultimate features, perplexity {tsne.perplexity:g}")
    if args.time_loop:
        from evaluation.timing import keras_single_predict, time_batched, time_per_image_loop

        paths = image_paths(entries[: args.time_loop], image_dir)
        batched = time_batched(
            predictor.predict_batch,
            paths,
            img_size=predictor.img_size,
            channels=predictor.channels,
            batch_size=args.batch_size,
            method=f"batched (tf.data, batch {args.batch_size})",
        )
        if predictor.keras_model is not None:
            one, method = keras_single_predict(predictor.keras_model), "per-image loop (cv2 + model.predict)"
        else:
            one, method = predictor.predict_batch, "per-image loop (cv2 + one-image batches)"
        loop = time_per_image_loop(
            one, paths, img_size=predictor.img_size, channels=predictor.channels, method=method
        )
        timing = {
            "batched": batched.to_dict(),
            "per_image_loop": loop.to_dict(),
            "speedup": batched.images_per_second / loop.images_per_second,
        }
        written["timing.json"] = atomic_write_text(
            out_dir / "timing.json", json.dumps(timing, indent=2) + "\n"
        )
        notes.append(
            f"Timing on {len(paths)} images: {batched.method} {batched.images_per_second:.1f} images/s, "
            f"{loop.method} {loop.images_per_second:.1f} images/s ({timing['speedup']:.1f}x)"
        )

    print(
        f"Checkpoint: {checkpoint}\n  {predictor.description}"
        + ("; logits, softmax applied" if predictor.output == "logits" else "")
    )
    print(f"Test list: {args.testfile}: {len(entries)} images from {image_dir}, "
          f"fingerprint {short(fingerprint)}")
    print(
        f"Batched prediction: {len(entries)} images in {seconds:.1f} s "
        f"({len(entries) / seconds if seconds > 0 else 0:.1f} images/s incl. start-up, batch "
        f"{args.batch_size})"
    )
    for note in notes:
        print(note)
    print(f"Wrote to {out_dir}: {', '.join(sorted(written))}")
    if args.gradcam:
        print(f"  and {out_dir / 'gradcam'}/")
    print()
    print(format_report(metrics))  # ends with the research-use disclaimer
    return EXIT_OK


if __name__ == "__main__":
    raise SystemExit(main())
