"""Build the COVIDx chest X-ray dataset (normal, pneumonia, COVID-19) from the public sources.

Give the folders of the sources you downloaded (at least one) and an output
folder; the result is OUT/train/, OUT/test/, OUT/train_COVIDx.txt,
OUT/test_COVIDx.txt (COVID-Net's lines "patientid filename label source", or
SURFsara's "patientid filename label" with --split surfsara), OUT/SHA256SUMS
(every listed image; check with `sha256sum -c SHA256SUMS` in OUT) and
OUT/report.json (per source and class: rows read, images listed, every
skipped row with its reason, and each list's fingerprint: SHA-256 over its
lines and its images' hashes, printed at the end, so that two groups can check
that they built the same dataset).

  python create_covidx.py --cohen covid-chestxray-dataset --figure1 Figure1-COVID-chestxray-dataset \\
      --actualmed Actualmed-COVID-chestxray-dataset --sirm COVID-19-Radiography-Database \\
      --rsna rsna-pneumonia-detection-challenge --ricord MIDRC-RICORD-1c --out data

  python create_covidx.py --synthetic demo/sources --out demo/covidx   # no download needed

--split covidnet reproduces COVID-Net's create_COVIDx (its fixed test patients);
--split surfsara reproduces SURFsara's create_COVIDx_v2 (cohen PA views and
RSNA only). Re-running is safe: lists are replaced, intact images are kept.

  python create_covidx.py --radiography-db COVID-19_Radiography_Dataset --out radiography

builds the ResNet-18 study's dataset instead (the whole COVID-19 Radiography
Database, seeded 70/10/20 split per class, train/val/test lists).

  python create_covidx.py ... --out data --cache 512    # or later: --out data --cache 512

also writes the images resized once into sharded TFRecord files
(data/cache-512/) for train_keras.py --cache. See docs/dataset.md for the
download instructions and every rule.

Exit status: 0 on success (bad rows and images are skipped and reported),
1 when no usable image was found or the output could not be written (a full
disk: the previous lists and report are then left untouched), 2 for bad
arguments or missing folders, 130 after Ctrl-C, 143 after SIGTERM. A run
killed at any moment leaves only complete files under their final names (and
hidden .partial-* files the next run removes); re-running finishes the job.
"""
from __future__ import annotations

import argparse
import contextlib
import logging
import os
import signal
import sys
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path

from common.cli import EXIT_FAILURE, EXIT_OK, DefaultsHelpFormatter, UsageError, handle_errors, setup_logging
from data.images import RESIZE_METHODS

log = logging.getLogger("create_covidx")

EXIT_TERMINATED = 128 + signal.SIGTERM
DEFAULT_SYNTHETIC_SIZE = 400
DEFAULT_SYNTHETIC_IMAGE_SIZE = 256
DEFAULT_RADIOGRAPHY_SPLIT = (0.7, 0.1, 0.2)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Parse the command line (``argv`` defaults to ``sys.argv[1:]``)."""
    parser = argparse.ArgumentParser(
        prog="create_covidx.py", description=__doc__, formatter_class=DefaultsHelpFormatter
    )
    _add_source_args(parser)
    _add_output_args(parser)
    _add_split_args(parser)
    _add_cache_args(parser)
    _add_synthetic_args(parser)
    _add_performance_args(parser)
    parser.add_argument("-v", "--verbose", action="count", default=0, help="debug logging")
    return parser.parse_args(argv)


def _add_source_args(parser: argparse.ArgumentParser) -> None:
    # The flags and their help come from the registry of sources (data.sources), in its order.
    from data.sources import SOURCES

    sources = parser.add_argument_group("sources (at least one, or --synthetic)")
    for spec in SOURCES:
        sources.add_argument(
            spec.flag, dest=spec.option, metavar="DIR", type=Path, default=None, help=spec.help
        )
    sources.add_argument(
        "--ricord-list",
        metavar="FILE",
        type=Path,
        default=None,
        help="COVID-Net's ricord_data_set.txt (usable RICORD images and crop boxes); when not given, "
        "the --ricord folder's ricord_data_set.txt is used if present, else every AP/PA image",
    )


def _add_output_args(parser: argparse.ArgumentParser) -> None:
    from data.lists import LIST_FORMATS

    output = parser.add_argument_group("output")
    output.add_argument(
        "--out",
        metavar="DIR",
        type=Path,
        default=None,
        help="output folder (train/, test/, *_COVIDx.txt, SHA256SUMS, report.json)",
    )
    output.add_argument(
        "--list-format",
        choices=LIST_FORMATS,
        default=None,
        help="list lines: covidnet = 'patientid filename label source' (COVID-Net's "
        "create_COVIDx), surfsara = 'patientid filename label' (what SURFsara's data.py "
        "reads: label = last field). Default: surfsara with --split surfsara, else covidnet",
    )


def _add_split_args(parser: argparse.ArgumentParser) -> None:
    # The split rules and the sources that imply one come from the registries (data.splits, data.sources).
    from data.sources import SOURCES
    from data.splits import DEFAULT_RULES, RULES

    implied = ", ".join(f"{rule} with {flag}" for rule, flag in _implied_rules(SOURCES))
    split = parser.add_argument_group("split")
    split.add_argument(
        "--split",
        choices=tuple(RULES),
        default=argparse.SUPPRESS,
        help="split rule: " + "; ".join(f"{name}: {rules.description}" for name, rules in RULES.items())
        + f" (default: {DEFAULT_RULES}, the default for the COVIDx sources; {implied})",
    )
    split.add_argument(
        "--radiography-split",
        metavar="TRAIN,VAL,TEST",
        type=_fractions,
        default=DEFAULT_RADIOGRAPHY_SPLIT,
        help="--split radiography: fractions of each class in train, validation and test",
    )


def _implied_rules(sources: Sequence) -> list[tuple[str, str]]:
    """(split rule, flag) of every source that calls for its own split rule."""
    return [(spec.split_rule, spec.flag) for spec in sources if spec.split_rule]


def _add_cache_args(parser: argparse.ArgumentParser) -> None:
    cache = parser.add_argument_group(
        "preprocessed cache",
        "Images resized once into sharded TFRecord files, for train_keras.py --cache. With sources, the "
        "cache is built after the dataset; with --out alone, from the lists already in --out.",
    )
    cache.add_argument(
        "--cache",
        metavar="SIZE",
        type=int,
        default=None,
        help="also write the images resized to SIZE x SIZE grayscale into --cache-dir",
    )
    cache.add_argument(
        "--cache-dir",
        metavar="DIR",
        type=Path,
        default=None,
        help="where the cache goes (default: OUT/cache-SIZE)",
    )
    cache.add_argument(
        "--cache-resize",
        choices=RESIZE_METHODS,
        default="baseline",
        help="how the cached images are resized: baseline (SURFsara's cv2-style bilinear) or torchvision "
        "(Pillow's antialiased bilinear, the PyTorch studies'); train with the same train_keras.py --resize",
    )


def _add_synthetic_args(parser: argparse.ArgumentParser) -> None:
    synthetic = parser.add_argument_group("synthetic sources (no download)")
    synthetic.add_argument(
        "--synthetic",
        metavar="DIR",
        type=Path,
        default=None,
        help="write small synthetic sources in the real formats into DIR "
        "(and build COVIDx from them when --out is given)",
    )
    synthetic.add_argument(
        "--synthetic-size",
        metavar="N",
        type=int,
        default=DEFAULT_SYNTHETIC_SIZE,
        help="number of synthetic images (about a third per class)",
    )
    synthetic.add_argument(
        "--synthetic-image-size",
        metavar="PX",
        type=int,
        default=DEFAULT_SYNTHETIC_IMAGE_SIZE,
        help="side of the square synthetic images, in pixels",
    )
    synthetic.add_argument(
        "--seed",
        type=int,
        default=0,
        help="seed of the synthetic sources and of the --split radiography draw",
    )


def _add_performance_args(parser: argparse.ArgumentParser) -> None:
    performance = parser.add_argument_group("performance")
    performance.add_argument(
        "--workers",
        metavar="N",
        type=int,
        default=os.cpu_count() or 1,
        help="processes that convert and copy images",
    )
    performance.add_argument(
        "--no-progress", action="store_true", help="no progress bar (it is shown only on a terminal anyway)"
    )


def _fractions(text: str) -> tuple[float, ...]:
    try:
        return tuple(float(part) for part in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected three fractions such as 0.7,0.1,0.2, received {text!r}"
        ) from None


def _check_options(args: argparse.Namespace) -> dict[str, Path]:
    """The given sources (option -> folder), after checking the options go together."""
    from data.sources import BY_OPTION, SOURCES

    given = {s.option: getattr(args, s.option) for s in SOURCES if getattr(args, s.option) is not None}
    cache_only = args.cache is not None and not given and args.synthetic is None
    if args.synthetic is not None:
        if given:
            flags = ", ".join(BY_OPTION[o].flag for o in given)
            raise UsageError(f"--synthetic builds from its own sources; do not combine it with {flags}")
        if args.ricord_list is not None:
            raise UsageError("--ricord-list cannot be used with --synthetic")
    elif cache_only:
        if args.out is None:
            raise UsageError(
                "--cache without sources builds the cache of an existing dataset: --out is required"
            )
    else:
        if not given:
            raise UsageError(
                "no source given: use at least one of "
                + ", ".join(s.flag for s in SOURCES)
                + " (or --synthetic DIR for a demo, or --cache SIZE --out DIR to cache an existing dataset)"
            )
        if args.out is None:
            raise UsageError("--out is required: the folder to write COVIDx into")
    if args.workers < 1:
        raise UsageError(f"--workers must be at least 1, received {args.workers}")
    if args.cache is not None and args.cache < 8:
        raise UsageError(f"--cache must be an image size of at least 8 px, received {args.cache}")
    if args.cache_dir is not None and args.cache is None:
        raise UsageError("--cache-dir needs --cache SIZE")
    if args.cache is not None and args.out is None:
        raise UsageError("--cache needs --out: the dataset whose images are cached")
    return given


def _split_name(args: argparse.Namespace, given: dict[str, Path]) -> str:
    """--split, or the split rule the sources call for when it was not given."""
    from data.sources import implied_split_rule

    return args.split if hasattr(args, "split") else implied_split_rule(given)


def _build_cache(
    out: Path, *, size: int, cache_dir: Path | None, progress: bool, resize: str = "baseline"
) -> Path:
    """Cache every list found in ``out`` (train, val, test) at ``size`` px; returns the cache folder.

    ``resize``: the resize method the cache's images get (``data.images.RESIZE_METHODS``).
    """
    from data.build import list_name
    from data.cache import build_cache
    from data.pipeline import load_entries
    from data.splits import LISTS, image_folder

    lists = {}
    for name in LISTS:
        path = out / list_name(name)
        if path.is_file():
            # The cache must hold every listed image: a missing or unreadable one stops here, named.
            image_dir = out / image_folder(name)
            lists[name] = (
                load_entries(path, image_dir, verify="header", what=f"--out list {path.name}"),
                image_dir,
            )
    if "train" not in lists:
        raise FileNotFoundError(
            f"--cache: {out / list_name('train')} not found; build the dataset first (or give its sources)"
        )
    target = cache_dir if cache_dir is not None else out / f"cache-{size}"
    wrap = None
    if progress:
        from tqdm import tqdm

        wrap = lambda work: tqdm(work, unit="shard", desc="caching")  # noqa: E731
    root = build_cache(target, lists=lists, size=size, progress=wrap, resize=resize)
    counts = ", ".join(f"{name} {len(entries)}" for name, (entries, _) in lists.items())
    how = "" if resize == "baseline" else f" --resize {resize}"
    print(f"cache of {size} x {size} px images ({counts}, {resize} resize) in {root}; "
          f"train with --cache {root}{how}")
    return root


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised in the main thread so that the run stops the way Ctrl-C stops it.

    A ``KeyboardInterrupt`` subclass, so that no ``except Exception`` on the way
    swallows it: every temporary file is removed by its ``atomic_path`` and
    the image workers are ended before the process exits.
    """


@contextlib.contextmanager
def _sigterm_stops_the_run() -> Iterator[None]:
    if threading.current_thread() is not threading.main_thread():
        yield  # signal handlers can only be installed from the main thread
        return

    def stop(signum: int, frame: object) -> None:
        raise Terminated()

    previous = signal.signal(signal.SIGTERM, stop)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


@handle_errors
def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status."""
    args = parse_args(argv)
    from data.build import OutputError

    try:
        with _sigterm_stops_the_run():
            return _run(args)
    except Terminated:
        print(
            "error: terminated by SIGTERM; every file under its final name is complete, "
            "re-run the same command to finish",
            file=sys.stderr,
        )
        return EXIT_TERMINATED
    except OutputError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_FAILURE


def _run(args: argparse.Namespace) -> int:
    setup_logging(args.verbose)
    if not args.verbose:
        # The JPEG 2000 encoder logs every tile at INFO level.
        logging.getLogger("openjpeg").setLevel(logging.WARNING)
    given = _check_options(args)
    progress = not args.no_progress and sys.stderr.isatty()
    if not given and args.synthetic is None:
        _build_cache(args.out, size=args.cache, cache_dir=args.cache_dir, progress=progress,
                     resize=args.cache_resize)
        return EXIT_OK
    split = _split_name(args, given)
    if split != "radiography" and args.radiography_split != DEFAULT_RADIOGRAPHY_SPLIT:
        raise UsageError(f"--radiography-split applies to --split radiography, not to --split {split}")
    if args.synthetic is not None:
        given = _synthetic_sources(args, split)
        if args.out is None:
            return EXIT_OK
    from data.build import build_covidx

    result = build_covidx(
        out_dir=args.out,
        sources=given,
        split=split,
        workers=args.workers,
        ricord_list=args.ricord_list,
        split_seed=args.seed,
        split_fractions=args.radiography_split,
        progress=progress,
        list_format=args.list_format or ("surfsara" if split == "surfsara" else "covidnet"),
    )
    _print_summary(result.report, result.report_path)
    if not result.usable:
        print("error: no usable image was found in the given sources (see report.json)", file=sys.stderr)
        return EXIT_FAILURE
    if args.cache is not None:
        _build_cache(args.out, size=args.cache, cache_dir=args.cache_dir, progress=progress,
                     resize=args.cache_resize)
    return EXIT_OK


def _synthetic_sources(args: argparse.Namespace, split: str) -> dict[str, Path]:
    """Write the synthetic sources into --synthetic; return those the split rule takes (option -> folder)."""
    from data.sources.base import describe_os_error
    from data.splits import get_rules
    from data.synthetic import make_synthetic_radiography_db, make_synthetic_sources

    try:
        folders = make_synthetic_sources(
            args.synthetic, size=args.synthetic_size, image_size=args.synthetic_image_size, seed=args.seed
        )
        folders["radiography_db"] = make_synthetic_radiography_db(
            args.synthetic / "radiography-db",
            size=args.synthetic_size,
            image_size=args.synthetic_image_size,
            seed=args.seed,
        )
    except OSError as exc:
        raise UsageError(
            f"--synthetic: expected a folder the synthetic sources can be written into, "
            f"received {args.synthetic} ({describe_os_error(exc)})"
        ) from None
    print(f"synthetic sources written to {args.synthetic}")
    allowed = get_rules(split).allowed_sources
    return {o: f for o, f in folders.items() if allowed is None or o in allowed}


def _print_summary(report: dict, report_path: Path) -> None:
    from data.report import format_fingerprints, format_summary

    print(format_summary(report))
    print(format_fingerprints(report))
    print(f"report: {report_path}")


if __name__ == "__main__":
    raise SystemExit(main())
