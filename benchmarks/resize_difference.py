#!/usr/bin/env python3
"""How much the two resize methods differ on real chest X-rays, pixel by pixel.

    python benchmarks/resize_difference.py IMAGE_OR_FOLDER [...] [--sizes 224 512] [--min-side 1700]

Every image is decoded as the training pipeline decodes it (3-channel uint8),
then resized to each size with ``baseline`` (SURFsara's cv2-style bilinear
without antialiasing) and ``torchvision`` (the PyTorch studies' Pillow
bilinear, antialiased; see ``data/images.py``). Printed per size, over all
images: the mean and the largest absolute pixel difference (in units of the
[0, 1] model input and of the 0-255 scale), and the share of pixels that differ
by more than 4/255. ``--json FILE`` writes the per-image figures too.
"""
from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
_SUFFIXES = {".png", ".jpg", ".jpeg"}


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Command-line arguments."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("inputs", nargs="+", type=Path, help="images or folders of PNG/JPEG images")
    parser.add_argument("--sizes", nargs="+", type=int, default=[224, 512], help="square output sizes")
    parser.add_argument(
        "--min-side",
        type=int,
        default=1700,
        help="only images whose shorter side has at least this many pixels (default 1700: "
        "the ~2048 px originals)",
    )
    parser.add_argument("--json", type=Path, default=None, help="also write the per-image figures here")
    return parser.parse_args(argv)


def _images(inputs: Sequence[Path]) -> list[Path]:
    found: list[Path] = []
    for path in inputs:
        if path.is_dir():
            found += sorted(p for p in path.rglob("*") if p.suffix.lower() in _SUFFIXES)
        elif path.is_file():
            found.append(path)
        else:
            raise FileNotFoundError(
                f"IMAGE_OR_FOLDER: expected an image or a folder, received {path}, which does not exist"
            )
    return found


def main(argv: Sequence[str] | None = None) -> int:
    """Measure and print the table; returns the exit code."""
    args = parse_args(argv)
    if str(REPO_ROOT) not in sys.path:
        sys.path.insert(0, str(REPO_ROOT))
    import numpy as np

    from common.fsutil import atomic_write_text
    from data.images import decode_image, resize_image

    rows = []
    for path in _images(args.inputs):
        image = decode_image(path.read_bytes(), channels=3)
        height, width = int(image.shape[0]), int(image.shape[1])
        if min(height, width) < args.min_side:
            continue
        row = {"image": str(path), "height": height, "width": width}
        for size in args.sizes:
            baseline = resize_image(image, size, method="baseline").numpy()
            torchvision = resize_image(image, size, method="torchvision").numpy()
            diff = np.abs(baseline - torchvision)
            row[str(size)] = {
                "mean": float(diff.mean()),
                "max": float(diff.max()),
                "share_over_4": float((diff > 4 / 255 + 1e-7).mean()),
            }
        rows.append(row)
    if not rows:
        print(f"no image with a shorter side of at least {args.min_side} px", file=sys.stderr)
        return 1
    print(
        f"{len(rows)} images, shorter side {min(min(r['height'], r['width']) for r in rows)}-"
        f"{max(min(r['height'], r['width']) for r in rows)} px\n"
    )
    print("| size | mean abs. difference | largest difference | pixels differing by > 4/255 |")
    print("|---:|---:|---:|---:|")
    for size in args.sizes:
        means = [r[str(size)]["mean"] for r in rows]
        largest = max(r[str(size)]["max"] for r in rows)
        share = float(np.mean([r[str(size)]["share_over_4"] for r in rows]))
        print(
            f"| {size} | {np.mean(means):.4f} ({np.mean(means) * 255:.2f}/255; images {min(means) * 255:.2f}-"
            f"{max(means) * 255:.2f}) | {largest:.3f} ({largest * 255:.0f}/255) | {share:.1%} |"
        )
    if args.json:
        atomic_write_text(args.json, json.dumps(rows, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
