#!/usr/bin/env python3
"""Write the validation split of a COVIDx train list as two list files.

    python recipes/split_val.py --trainfile DATA/train_COVIDx.txt --out-train OUT/train_split.txt \\
        --out-val OUT/val_split.txt [--fraction 0.1] [--seed 0]

The weighted ensemble of the ImageNet-transfer study fits its weights on
validation predictions of both models, so both must be trained without those
images and evaluated on them afterwards: that needs the validation list as a
file. This is the split ``train_keras.py --val_split FRACTION --seed SEED``
carves in memory (``data.pipeline.patient_split``: by patient, about FRACTION
of each class), written out: training with ``--trainfile OUT/train_split.txt
--valfile OUT/val_split.txt`` trains on the same images, and ``eval_keras.py
--testfile OUT/val_split.txt --image_dir DATA/train`` predicts the validation
images (they are in the train/ folder). Re-running with the same list and
seed writes the same files. Bad list lines are skipped and counted.
"""
from __future__ import annotations

import argparse
import logging
from collections.abc import Sequence
from pathlib import Path

from common.cli import DefaultsHelpFormatter, handle_errors, setup_logging

log = logging.getLogger("split_val")


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Command-line arguments of ``split_val.py``."""
    parser = argparse.ArgumentParser(prog="split_val.py", description=__doc__,
                                     formatter_class=DefaultsHelpFormatter)
    io = parser.add_argument_group("lists")
    io.add_argument("--trainfile", required=True, help="COVIDx train list to split")
    io.add_argument("--out-train", dest="out_train", required=True,
                    help="list of the images left for training")
    io.add_argument("--out-val", dest="out_val", required=True, help="list of the validation images")
    split = parser.add_argument_group("split (train_keras.py's --val_split and --seed)")
    split.add_argument("--fraction", type=float, default=0.1, help="share of each class's images, by patient")
    split.add_argument("--seed", type=int, default=0, help="seed of the patient draw")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="debug logging")
    return parser.parse_args(argv)


@handle_errors
def main(argv: Sequence[str] | None = None) -> int:
    """Split the list and write both parts; returns the exit code."""
    args = parse_args(argv)
    setup_logging(args.verbose)
    if not 0.0 < args.fraction < 1.0:
        raise ValueError(f"--fraction must be between 0 and 1 (e.g. 0.1), received {args.fraction}")
    if Path(args.out_train).resolve() == Path(args.out_val).resolve():
        raise ValueError(f"--out-train and --out-val must be different files, both are {args.out_train}")
    # TensorFlow comes with data.pipeline; imported after parsing so --help is instant.
    from data.labels import CLASSES
    from data.lists import read_list, write_list
    from data.pipeline import patient_split

    listed = read_list(args.trainfile)
    for bad in listed.bad_lines[:5]:
        log.warning("--trainfile %s line %d skipped: %s", args.trainfile, bad.line_no, bad.reason)
    if not listed.entries:
        raise ValueError(f"--trainfile {args.trainfile} has no usable lines "
                         f"({len(listed.bad_lines)} bad lines)")
    train, val = patient_split(listed.entries, fraction=args.fraction, seed=args.seed)
    if not val:
        raise ValueError(f"--trainfile {args.trainfile}: no class has two patients, so there is nothing to "
                         f"hold out for validation")
    for path in (args.out_train, args.out_val):
        Path(path).parent.mkdir(parents=True, exist_ok=True)
    write_list(args.out_train, train)
    write_list(args.out_val, val)

    def counts(entries: list) -> str:
        return ", ".join(f"{c} {sum(e.label == c for e in entries)}" for c in CLASSES)

    print(f"{args.trainfile}: {len(listed.entries)} images, {len(listed.bad_lines)} bad lines skipped, "
          f"{listed.duplicates} duplicate lines dropped")
    print(f"  train {len(train):6d} images ({counts(train)}) -> {args.out_train}")
    print(f"  val   {len(val):6d} images ({counts(val)}), {len({e.patient_key for e in val})} patients "
          f"(--fraction {args.fraction:g}, --seed {args.seed}) -> {args.out_val}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
