#!/usr/bin/env python3
"""Classify single chest X-ray images (PNG, JPEG or DICOM) with a trained model.

    python predict.py --checkpoint PATH IMAGE [IMAGE ...] [--json]

PATH is any model eval_keras.py accepts (.hdf5/.h5 full model or weights,
.weights.h5, .keras, SavedModel folder, .onnx). Each image is preprocessed as
in evaluation (DICOM first converted to 8-bit grayscale as create_covidx.py
does; a 16-bit PNG becomes 8 bit as cv2.imread makes it; an alpha channel is
dropped; resized with the method the checkpoint records, or --resize); one
line per image gives the predicted class and the three probabilities.

Image size rule (the original pixels, before resizing to the model's input):
an image whose shorter side is below 32 px or whose aspect ratio (long side /
short side) is beyond 1:4 cannot be a chest radiograph and is refused; one
whose shorter side is below 128 px or whose aspect ratio is beyond 1:2 is odd
(public chest X-rays are about 150 to 4,000+ px a side, 1:1 to 1:1.8) and is
predicted with a "warning: IMAGE: ..." line on stderr.

An image that cannot be used (missing, empty, not an image, damaged or
truncated, refused by the size rule) gets its own "error: IMAGE: ..." line on
stderr, the others are still predicted, and the exit code is then 2; a bad
checkpoint is one "error: ..." line and exit code 2.
Research use only: not a medical device.
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from common.cli import (
    EXIT_OK,
    EXIT_USAGE,
    DefaultsHelpFormatter,
    error_message,
    handle_errors,
    positive_int,
    setup_logging,
)
from data.images import RESIZE_METHODS
from evaluation.arguments import add_architecture_arguments
from evaluation.preprocessing import RESIZE_HELP

if TYPE_CHECKING:  # numpy is imported in main(), after --help is answered
    import numpy as np

log = logging.getLogger("predict")


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Command-line arguments of ``predict.py``."""
    parser = argparse.ArgumentParser(
        prog="predict.py", description=__doc__, formatter_class=DefaultsHelpFormatter
    )
    inputs = parser.add_argument_group("model and images")
    inputs.add_argument(
        "--checkpoint",
        required=True,
        default=argparse.SUPPRESS,
        metavar="PATH",
        help="model: .hdf5/.h5 (full model or weights), .weights.h5, .keras, SavedModel folder or .onnx",
    )
    inputs.add_argument(
        "images",
        nargs="+",
        metavar="IMAGE",
        help="PNG, JPEG (also BMP, GIF) or DICOM files; refused when the shorter side is "
        "below 32 px or the aspect ratio beyond 1:4, warned below 128 px or beyond 1:2",
    )
    inputs.add_argument(
        "--img_size",
        type=positive_int,
        default=argparse.SUPPRESS,
        metavar="N",
        help="square image size (default: the model's input size; 512 for a weights-only "
        "file without run_config.json)",
    )
    inputs.add_argument("--resize", choices=RESIZE_METHODS, default=argparse.SUPPRESS, help=RESIZE_HELP)

    add_architecture_arguments(parser)

    out = parser.add_argument_group("output")
    out.add_argument(
        "--json",
        action="store_true",
        help="print one JSON document (results, errors, warnings and the disclaimer) instead of text",
    )
    out.add_argument("--batch_size", type=positive_int, default=16, help="images per prediction batch")
    out.add_argument("-v", "--verbose", action="count", default=0, help="debug logging")
    return parser.parse_args(argv)


def _report_problems(result: dict) -> None:
    """The image's warning and error lines on stderr (flushed, so they interleave with stdout in order)."""
    for warning in result.get("warnings", []):
        print(f"warning: {result['image']}: {warning}", file=sys.stderr, flush=True)
    if "error" in result:
        print(f"error: {result['image']}: {result['error']}", file=sys.stderr, flush=True)


def read_images(
    images: Sequence[str], *, img_size: int, channels: int, resize: str
) -> tuple[list[dict[str, Any]], dict[int, np.ndarray]]:
    """One result per image (``{"image", "error"}`` or ``{"image", "warnings"}``) and, by position,
    the pixels of every image that could be read (resized by ``resize``, data.images.RESIZE_METHODS)."""
    from data.images import check_radiograph_shape, read_image
    from evaluation.inference import progress_bar

    results: list[dict[str, Any]] = []
    pixels: dict[int, np.ndarray] = {}
    # Progress bars on stderr only when it is a terminal: stdout stays the results alone.
    with progress_bar(len(images), progress=None, desc="reading") as bar:
        for image in images:
            bar.update()
            try:
                loaded = read_image(image, img_size=img_size, channels=channels, resize=resize)
                warning = check_radiograph_shape(loaded.height, loaded.width)
            except (ValueError, OSError) as exc:
                # The line already names the image: an OSError's path would repeat it.
                reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else error_message(exc)
                results.append({"image": image, "error": reason})
                continue
            pixels[len(results)] = loaded.pixels
            results.append({"image": image, "warnings": [warning] if warning else []})
    return results, pixels


def predict_pixels(
    predict_batch: Callable[[np.ndarray], np.ndarray], pixels: dict[int, np.ndarray], *, batch_size: int
) -> dict[int, np.ndarray]:
    """Class probabilities of each image in ``pixels``, by the same keys, ``batch_size`` images at a time."""
    import numpy as np

    from evaluation.inference import progress_bar

    keys = list(pixels)
    out: dict[int, np.ndarray] = {}
    with progress_bar(len(keys), progress=None, desc="predicting") as bar:
        for start in range(0, len(keys), batch_size):
            chunk = keys[start : start + batch_size]
            out.update(zip(chunk, predict_batch(np.stack([pixels[k] for k in chunk]))))
            bar.update(len(chunk))
    return out


def print_results(
    results: Sequence[dict[str, Any]],
    *,
    as_json: bool,
    checkpoint: str,
    model: str,
    preprocessing: dict[str, str],
) -> None:
    """Errors and warnings on stderr; a line per image (or one JSON document) and the disclaimer on stdout.

    ``preprocessing`` (``Preprocessing.to_dict()``: the resize method and where it came from) is in the
    JSON document; the text output stays one line per image (the log line on stderr names it).
    """
    from common.disclaimer import DISCLAIMER
    from data.labels import CLASSES

    if as_json:
        for r in results:  # stdout stays one JSON document; the errors and warnings are in it too
            _report_problems(r)
        document = {
            "checkpoint": checkpoint,
            "model": model,
            "preprocessing": dict(preprocessing),
            "classes": list(CLASSES),
            "results": list(results),
            "disclaimer": DISCLAIMER,
        }
        print(json.dumps(document, indent=2))
        return
    for r in results:
        _report_problems(r)
        if "error" not in r:
            probs = "  ".join(f"p_{c}={v:.4f}" for c, v in r["probabilities"].items())
            print(f"{r['image']}: {r['predicted']}  {probs}", flush=True)
    print(f"\n{DISCLAIMER}")


@handle_errors
def main(argv: Sequence[str] | None = None) -> int:
    """Predict every image; returns 0, or 2 when any image could not be predicted."""
    args = parse_args(argv)
    setup_logging(args.verbose)
    # Heavy imports after argument parsing, so --help is instant.
    import numpy as np

    from data.labels import CLASSES
    from evaluation.loaders import load_predictor

    predictor = load_predictor(
        args.checkpoint,
        model=getattr(args, "model", None),
        img_size=getattr(args, "img_size", None),
        head=getattr(args, "head", None),
        channels=getattr(args, "channels", None),
        resize=getattr(args, "resize", None),
    )
    log.info("loaded %s; preprocessing: %s", predictor.description, predictor.preprocessing.describe())
    results, pixels = read_images(
        args.images, img_size=predictor.img_size, channels=predictor.channels,
        resize=predictor.preprocessing.resize,
    )
    probabilities = predict_pixels(predictor.predict_batch, pixels, batch_size=args.batch_size)
    for index, p in probabilities.items():
        results[index]["predicted"] = CLASSES[int(np.argmax(p))]
        results[index]["probabilities"] = {c: float(v) for c, v in zip(CLASSES, p)}
    print_results(
        results, as_json=args.json, checkpoint=str(predictor.path), model=predictor.description,
        preprocessing=predictor.preprocessing.to_dict(),
    )

    failed = [r for r in results if "error" in r]
    if failed:
        log.debug("%d of %d images could not be predicted", len(failed), len(results))
        return EXIT_USAGE
    return EXIT_OK


if __name__ == "__main__":
    raise SystemExit(main())
