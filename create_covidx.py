"""Build the COVIDx chest X-ray dataset (normal, pneumonia, COVID-19) from the public sources.

Give the folders of the sources you downloaded (at least one) and an output
folder; the result is OUT/train/, OUT/test/, OUT/train_COVIDx.txt,
OUT/test_COVIDx.txt (lines "patientid filename label source") and
OUT/report.json (per source and class: rows read, images listed, and every
skipped row with its reason).

  python create_covidx.py --cohen covid-chestxray-dataset --figure1 Figure1-COVID-chestxray-dataset \\
      --actualmed Actualmed-COVID-chestxray-dataset --sirm COVID-19-Radiography-Database \\
      --rsna rsna-pneumonia-detection-challenge --ricord MIDRC-RICORD-1c --out data

  python create_covidx.py --synthetic demo/sources --out demo/covidx   # no download needed

--split covidnet reproduces COVID-Net's create_COVIDx (its fixed test patients);
--split surfsara reproduces SURFsara's create_COVIDx_v2 (cohen PA views and
RSNA only). Re-running is safe: lists are replaced, intact images are kept.
See docs/dataset.md for the download instructions and every rule.

Exit status: 0 on success (bad rows and images are skipped and reported),
1 when no usable image was found, 2 for bad arguments or missing folders.
"""
from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path
from typing import Sequence

from common.cli import EXIT_FAILURE, EXIT_OK, DefaultsHelpFormatter, UsageError, handle_errors, setup_logging

log = logging.getLogger("create_covidx")

# Kept in sync with data.sources.SOURCES (checked by the tests); listed here so
# that --help does not need to import the data stack.
SOURCE_HELP = {
    "cohen": "ieee8023/covid-chestxray-dataset folder (metadata.csv, images/)",
    "figure1": "agchung/Figure1-COVID-chestxray-dataset folder (metadata.csv, images/)",
    "actualmed": "agchung/Actualmed-COVID-chestxray-dataset folder (metadata.csv, images/)",
    "sirm": "COVID-19 Radiography Database folder (COVID.metadata.xlsx, COVID/)",
    "rsna": "RSNA pneumonia challenge folder (stage_2_detailed_class_info.csv, stage_2_train_labels.csv, "
    "stage_2_train_images/)",
    "ricord": "MIDRC-RICORD-1c folder (MIDRC-RICORD-1C-<MRN>/<study>/<series>/*.dcm)",
}
DEFAULT_SYNTHETIC_SIZE = 400
DEFAULT_SYNTHETIC_IMAGE_SIZE = 256


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Parse the command line (``argv`` defaults to ``sys.argv[1:]``)."""
    parser = argparse.ArgumentParser(
        prog="create_covidx.py", description=__doc__, formatter_class=DefaultsHelpFormatter
    )
    sources = parser.add_argument_group("sources (at least one, or --synthetic)")
    for option, help_text in SOURCE_HELP.items():
        sources.add_argument(f"--{option}", metavar="DIR", type=Path, default=None, help=help_text)
    sources.add_argument(
        "--ricord-list", metavar="FILE", type=Path, default=None,
        help="COVID-Net's ricord_data_set.txt (usable RICORD images and crop boxes); when not given, "
        "the --ricord folder's ricord_data_set.txt is used if present, else every AP/PA image",
    )
    output = parser.add_argument_group("output")
    output.add_argument("--out", metavar="DIR", type=Path, default=None,
                        help="output folder (train/, test/, *_COVIDx.txt, report.json)")
    split = parser.add_argument_group("split")
    split.add_argument("--split", choices=("covidnet", "surfsara"), default="covidnet",
                       help="recipe: COVID-Net's create_COVIDx or SURFsara's create_COVIDx_v2")
    synthetic = parser.add_argument_group("synthetic sources (no download)")
    synthetic.add_argument("--synthetic", metavar="DIR", type=Path, default=None,
                           help="write small synthetic sources in the real formats into DIR "
                           "(and build COVIDx from them when --out is given)")
    synthetic.add_argument("--synthetic-size", metavar="N", type=int, default=DEFAULT_SYNTHETIC_SIZE,
                           help="number of synthetic images (about a third per class)")
    synthetic.add_argument("--synthetic-image-size", metavar="PX", type=int, default=DEFAULT_SYNTHETIC_IMAGE_SIZE,
                           help="side of the square synthetic images, in pixels")
    synthetic.add_argument("--seed", type=int, default=0, help="seed of the synthetic sources")
    performance = parser.add_argument_group("performance")
    performance.add_argument("--workers", metavar="N", type=int, default=os.cpu_count() or 1,
                             help="processes that convert and copy images")
    performance.add_argument("--no-progress", action="store_true",
                             help="no progress bar (it is shown only on a terminal anyway)")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="debug logging")
    return parser.parse_args(argv)


def _check_options(args: argparse.Namespace) -> dict[str, Path]:
    given = {option: getattr(args, option) for option in SOURCE_HELP if getattr(args, option) is not None}
    if args.synthetic is not None:
        if given:
            flags = ", ".join(f"--{o}" for o in given)
            raise UsageError(f"--synthetic builds from its own sources; do not combine it with {flags}")
        if args.ricord_list is not None:
            raise UsageError("--ricord-list cannot be used with --synthetic")
    else:
        if not given:
            raise UsageError(
                "no source given: use at least one of " + ", ".join(f"--{o}" for o in SOURCE_HELP)
                + " (or --synthetic DIR for a demo)"
            )
        if args.out is None:
            raise UsageError("--out is required: the folder to write COVIDx into")
    if args.workers < 1:
        raise UsageError(f"--workers must be at least 1, got {args.workers}")
    return given


@handle_errors
def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status."""
    args = parse_args(argv)
    setup_logging(args.verbose)
    if not args.verbose:
        # The JPEG 2000 encoder logs every tile at INFO level.
        logging.getLogger("openjpeg").setLevel(logging.WARNING)
    given = _check_options(args)

    from data.build import build_covidx
    from data.report import format_summary

    if args.synthetic is not None:
        from data.synthetic import make_synthetic_sources

        folders = make_synthetic_sources(
            args.synthetic, size=args.synthetic_size, image_size=args.synthetic_image_size, seed=args.seed
        )
        print(f"synthetic sources written to {args.synthetic}")
        if args.out is None:
            return EXIT_OK
        given = {option: folder for option, folder in folders.items()}
        if args.split == "surfsara":
            given = {o: f for o, f in given.items() if o in ("cohen", "rsna")}

    result = build_covidx(
        out_dir=args.out,
        sources=given,
        split=args.split,
        workers=args.workers,
        ricord_list=args.ricord_list,
        progress=not args.no_progress and sys.stderr.isatty(),
    )
    print(format_summary(result.report))
    print(f"report: {result.report_path}")
    if not result.usable:
        print("error: no usable image was found in the given sources (see report.json)", file=sys.stderr)
        return EXIT_FAILURE
    return EXIT_OK


if __name__ == "__main__":
    raise SystemExit(main())
