#!/usr/bin/env python3
"""The whole job on built-in synthetic data, on a CPU, in a few minutes (``make demo``).

Runs the project's own command-line tools one after the other, exactly as a
user would, and prints each as the shell command it stands for:

1. ``create_covidx.py --synthetic``: synthetic sources in the real public
   formats (cohen/Figure1/Actualmed CSV + PNG/JPEG, SIRM xlsx, RSNA JPEG
   DICOMs, RICORD MONOCHROME1 DICOMs) and COVIDx built from them;
2. ``train_keras.py``: SURFsara's training recipe (balanced batches, class
   weights, augmentation, Adam/amsgrad, ReduceLROnPlateau) on a small model at
   a small image size, ending with the test report;
3. ``eval_keras.py`` on the final full model (with Grad-CAM overlays) and on
   an early weights-only epoch checkpoint, as SURFsara saved them;
4. ``compare.py``: the two side by side, with McNemar's test;
5. ``predict.py`` on one PNG and one DICOM.

Everything goes under ``--out`` (default ``demo_output/``). Re-running
rebuilds the dataset in place and starts the training over.

    python demo.py                                # smallcnn at 64 px: ~1-2 min on 2 cores
    python demo.py --model resnet50v2 --head avg --img_size 128 --epochs 3   # the baseline backbone, slower

Research use only: synthetic data, not a medical result.
"""
from __future__ import annotations

import argparse
import shlex
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from common.cli import DefaultsHelpFormatter, handle_errors


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Command-line arguments of ``demo.py``."""
    parser = argparse.ArgumentParser(
        prog="demo.py", description=__doc__, formatter_class=DefaultsHelpFormatter
    )
    parser.add_argument(
        "--out", default="demo_output", type=Path, help="folder for everything the demo writes"
    )
    data = parser.add_argument_group("synthetic data")
    data.add_argument(
        "--synthetic-size", type=int, default=400, help="synthetic images (about a third per class)"
    )
    data.add_argument("--seed", type=int, default=0, help="seed of the data and of the training")
    train = parser.add_argument_group("training")
    train.add_argument("--model", default="smallcnn", help="registry model (see models/)")
    train.add_argument(
        "--head", default="flatten", choices=["flatten", "avg", "max"], help="pooling before the head"
    )
    train.add_argument("--img_size", type=int, default=64, help="image size")
    train.add_argument("--epochs", type=int, default=8, help="epochs")
    train.add_argument("--bs", type=int, default=8, help="batch size")
    train.add_argument(
        "--lr",
        type=float,
        default=0.001,
        help="learning rate (SURFsara's 2e-5 is for an ImageNet-initialised ResNet50V2)",
    )
    return parser.parse_args(argv)


def _step(title: str, script: str, main: Callable[[Sequence[str]], int], argv: list[str]) -> None:
    """Print the shell command, run it in-process and stop the demo if it fails."""
    print(f"\n=== {title}\n$ python {script} {shlex.join(argv)}\n", flush=True)
    start = time.perf_counter()
    code = main(argv)
    print(f"--- {script} finished in {time.perf_counter() - start:.0f} s (exit {code})", flush=True)
    if code != 0:
        raise SystemExit(f"error: demo stopped: {script} exited with {code}")


@handle_errors
def main(argv: Sequence[str] | None = None) -> int:
    """Run the demo; returns the exit code."""
    args = parse_args(argv)
    # The scripts import TensorFlow themselves, after their own argument parsing.
    import compare
    import create_covidx
    import eval_keras
    import predict
    import train_keras
    from data.lists import read_list
    from training.config import run_folder_name

    out: Path = args.out
    sources, covidx, runs = out / "sources", out / "covidx", out / "output"
    started = time.perf_counter()

    _step(
        "1. Build COVIDx from synthetic sources in the real formats",
        "create_covidx.py",
        create_covidx.main,
        [
            "--synthetic",
            str(sources),
            "--synthetic-size",
            str(args.synthetic_size),
            "--seed",
            str(args.seed),
            "--out",
            str(covidx),
        ],
    )

    name = f"demo-{args.model}-"
    _step(
        "2. Train (SURFsara's recipe; --weights none because nothing is downloaded)",
        "train_keras.py",
        train_keras.main,
        [
            "--trainfile",
            str(covidx / "train_COVIDx.txt"),
            "--testfile",
            str(covidx / "test_COVIDx.txt"),
            "--data_path",
            str(covidx),
            "--img_size",
            str(args.img_size),
            "--lr",
            str(args.lr),
            "--bs",
            str(args.bs),
            "--epochs",
            str(args.epochs),
            "--name",
            name,
            "--model",
            args.model,
            "--head",
            args.head,
            "--weights",
            "none",
            "--seed",
            str(args.seed),
            "--output",
            str(runs),
            "--resume",
            "off",
        ],
    )
    run_dir = runs / run_folder_name(name, args.lr)  # the folder train_keras.py named
    final = run_dir / "final_model.hdf5"
    early = sorted(run_dir.glob("cp-02-*.hdf5")) or sorted(run_dir.glob("cp-*.hdf5"))

    test = ["--testfile", str(covidx / "test_COVIDx.txt"), "--data_path", str(covidx), "--n_bootstrap", "500"]
    _step(
        "3a. Evaluate the final full model, with Grad-CAM overlays",
        "eval_keras.py",
        eval_keras.main,
        ["--checkpoint", str(final), *test, "--gradcam", "2", "--out", str(out / "eval_final")],
    )
    _step(
        f"3b. Evaluate the weights-only epoch checkpoint {early[0].name} (architecture from run_config.json)",
        "eval_keras.py",
        eval_keras.main,
        ["--checkpoint", str(early[0]), *test, "--out", str(out / "eval_early")],
    )

    _step(
        "4. Compare the two from their prediction files",
        "compare.py",
        compare.main,
        [
            str(out / "eval_final" / "predictions.csv"),
            str(out / "eval_early" / "predictions.csv"),
            "--names",
            "final",
            early[0].stem,
            "--n-bootstrap",
            "500",
            "--out",
            str(out / "comparison"),
        ],
    )

    # One PNG from the test list and one of the RSNA DICOMs the synthetic sources hold.
    png = covidx / "test" / read_list(covidx / "test_COVIDx.txt").entries[0].filename
    dicom = next(iter(sorted((sources / "rsna" / "stage_2_train_images").glob("*.dcm"))))
    _step(
        "5. Predict single images (PNG and DICOM)",
        "predict.py",
        predict.main,
        ["--checkpoint", str(final), str(png), str(dicom)],
    )

    print(f"\nDemo finished in {time.perf_counter() - started:.0f} s. Everything is under {out}/:")
    print(f"  dataset:      {covidx}/ (train/, test/, train_COVIDx.txt, test_COVIDx.txt, report.json)")
    print(f"  training run: {run_dir}/ (cp-EE-LOSS.hdf5 per epoch, final_model.hdf5, saved_model/,")
    print("                run_config.json, training_log.csv, logs/ for TensorBoard, test_evaluation/)")
    print(
        f"  evaluations:  {out / 'eval_final'}/, {out / 'eval_early'}/ (metrics.json, predictions.csv, plots)"
    )
    print(f"  comparison:   {out / 'comparison'}/")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
