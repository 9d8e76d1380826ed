#!/usr/bin/env python3
"""Classify single chest X-ray images (PNG, JPEG or DICOM) with a trained model.

    python predict.py --checkpoint PATH IMAGE [IMAGE ...] [--json]

PATH is any model eval_keras.py accepts (.hdf5/.h5 full model or weights,
.weights.h5, .keras, SavedModel folder, .onnx). Each image is preprocessed as
in evaluation (DICOM first converted to 8-bit grayscale as create_covidx.py
does); one line per image gives the predicted class and the three
probabilities. An image that cannot be read gets its own "error: IMAGE: ..."
line on stderr, the others are still predicted, and the exit code is then 2.
Research use only: not a medical device.
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
from typing import Sequence

from common.cli import EXIT_OK, EXIT_USAGE, DefaultsHelpFormatter, handle_errors, positive_int, setup_logging

log = logging.getLogger("predict")


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Command-line arguments of ``predict.py``."""
    parser = argparse.ArgumentParser(prog="predict.py", description=__doc__, formatter_class=DefaultsHelpFormatter)
    inputs = parser.add_argument_group("model and images")
    inputs.add_argument("--checkpoint", required=True, default=argparse.SUPPRESS, metavar="PATH",
                        help="model: .hdf5/.h5 (full model or weights), .weights.h5, .keras, SavedModel folder "
                             "or .onnx")
    inputs.add_argument("images", nargs="+", metavar="IMAGE", help="PNG, JPEG (also BMP, GIF) or DICOM files")
    inputs.add_argument("--img_size", type=positive_int, default=argparse.SUPPRESS, metavar="N",
                        help="square image size (default: the model's input size; 512 for a weights-only "
                             "file without run_config.json)")

    arch = parser.add_argument_group(
        "architecture of a weights-only checkpoint",
        "Only used when there is no run_config.json beside the weights file.",
    )
    arch.add_argument("--model", default=argparse.SUPPRESS,
                      help="registry model name, e.g. resnet50v2; required for a weights-only file without "
                           "run_config.json")
    arch.add_argument("--head", choices=["flatten", "avg", "max"], default=argparse.SUPPRESS,
                      help="pooling before the dense head (default: flatten)")
    arch.add_argument("--channels", type=int, choices=[1, 3], default=argparse.SUPPRESS,
                      help="image channels of the model input (default: 3)")

    out = parser.add_argument_group("output")
    out.add_argument("--json", action="store_true",
                     help="print one JSON document (results, errors and the disclaimer) instead of text")
    out.add_argument("--batch_size", type=positive_int, default=16, help="images per prediction batch")
    out.add_argument("-v", "--verbose", action="count", default=0, help="debug logging")
    return parser.parse_args(argv)


@handle_errors
def main(argv: Sequence[str] | None = None) -> int:
    """Predict every image; returns 0, or 2 when any image could not be predicted."""
    args = parse_args(argv)
    setup_logging(args.verbose)
    # Heavy imports after argument parsing, so --help is instant.
    import numpy as np

    from common.disclaimer import DISCLAIMER
    from data.labels import CLASSES
    from evaluation.loaders import load_image, load_predictor

    predictor = load_predictor(
        args.checkpoint,
        model=getattr(args, "model", None),
        img_size=getattr(args, "img_size", None),
        head=getattr(args, "head", None),
        channels=getattr(args, "channels", None),
    )
    log.info("loaded %s", predictor.description)

    results: list[dict] = []
    ready: list[tuple[int, np.ndarray]] = []
    for image in args.images:
        try:
            ready.append((len(results), load_image(image, img_size=predictor.img_size, channels=predictor.channels)))
            results.append({"image": image})
        except (ValueError, OSError) as exc:
            results.append({"image": image, "error": str(exc) or type(exc).__name__})
    for start in range(0, len(ready), args.batch_size):
        chunk = ready[start:start + args.batch_size]
        probabilities = predictor.predict_batch(np.stack([x for _, x in chunk]))
        for (index, _), p in zip(chunk, probabilities):
            results[index]["predicted"] = CLASSES[int(np.argmax(p))]
            results[index]["probabilities"] = {c: float(v) for c, v in zip(CLASSES, p)}

    failed = [r for r in results if "error" in r]
    if args.json:
        for r in failed:  # stdout stays one JSON document; the errors are in it too
            print(f"error: {r['image']}: {r['error']}", file=sys.stderr, flush=True)
        document = {
            "checkpoint": str(predictor.path),
            "model": predictor.description,
            "classes": list(CLASSES),
            "results": results,
            "disclaimer": DISCLAIMER,
        }
        print(json.dumps(document, indent=2))
    else:
        for r in results:
            if "error" in r:
                print(f"error: {r['image']}: {r['error']}", file=sys.stderr, flush=True)
            else:
                probs = "  ".join(f"p_{c}={v:.4f}" for c, v in r["probabilities"].items())
                print(f"{r['image']}: {r['predicted']}  {probs}", flush=True)
        print(f"\n{DISCLAIMER}")
    if failed:
        log.debug("%d of %d images could not be predicted", len(failed), len(results))
        return EXIT_USAGE
    return EXIT_OK


if __name__ == "__main__":
    raise SystemExit(main())
