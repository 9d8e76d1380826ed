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
import dataclasses
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


@dataclasses.dataclass(frozen=True)
class DemoPaths:
    """Where the demo writes: the synthetic sources, COVIDx, training runs, evaluations, comparison."""

    out: Path

    @property
    def sources(self) -> Path:
        return self.out / "sources"

    @property
    def covidx(self) -> Path:
        return self.out / "covidx"

    @property
    def runs(self) -> Path:
        return self.out / "output"

    @property
    def test_list(self) -> Path:
        return self.covidx / "test_COVIDx.txt"

    @property
    def eval_final(self) -> Path:
        return self.out / "eval_final"

    @property
    def eval_early(self) -> Path:
        return self.out / "eval_early"

    @property
    def comparison(self) -> Path:
        return self.out / "comparison"


def create_covidx_argv(paths: DemoPaths, *, synthetic_size: int, seed: int) -> list[str]:
    """Step 1: synthetic sources in the real formats and COVIDx built from them."""
    return ["--synthetic", str(paths.sources), "--synthetic-size", str(synthetic_size), "--seed", str(seed),
            "--out", str(paths.covidx)]


def train_argv(
    paths: DemoPaths, *, name: str, model: str, head: str, img_size: int, lr: float, bs: int, epochs: int,
    seed: int,
) -> list[str]:
    """Step 2: SURFsara's training recipe; ``--weights none`` because nothing is downloaded."""
    return [
        "--trainfile", str(paths.covidx / "train_COVIDx.txt"), "--testfile", str(paths.test_list),
        "--data_path", str(paths.covidx), "--img_size", str(img_size), "--lr", str(lr), "--bs", str(bs),
        "--epochs", str(epochs), "--name", name, "--model", model, "--head", head, "--weights", "none",
        "--seed", str(seed), "--output", str(paths.runs), "--resume", "off",
    ]  # fmt: skip


def early_checkpoint(run_dir: Path) -> Path:
    """The weights-only checkpoint of epoch 2 (the first one saved if the run had fewer epochs)."""
    found = sorted(run_dir.glob("cp-02-*.hdf5")) or sorted(run_dir.glob("cp-*.hdf5"))
    if not found:
        raise FileNotFoundError(f"no epoch checkpoint cp-*.hdf5 in {str(run_dir)!r}; received none")
    return found[0]


def eval_argv(paths: DemoPaths, *, checkpoint: Path, out: Path, gradcam: int = 0) -> list[str]:
    """Steps 3a/3b: evaluate a checkpoint on the test list (with ``gradcam`` overlays per class)."""
    argv = ["--checkpoint", str(checkpoint), "--testfile", str(paths.test_list), "--data_path",
            str(paths.covidx), "--n_bootstrap", "500"]
    if gradcam:
        argv += ["--gradcam", str(gradcam)]
    return [*argv, "--out", str(out)]


def compare_argv(paths: DemoPaths, *, early: Path) -> list[str]:
    """Step 4: the two evaluations side by side, from their prediction files."""
    return [str(paths.eval_final / "predictions.csv"), str(paths.eval_early / "predictions.csv"),
            "--names", "final", early.stem, "--n-bootstrap", "500", "--out", str(paths.comparison)]


def predict_argv(paths: DemoPaths, *, checkpoint: Path) -> list[str]:
    """Step 5: one PNG from the test list and one of the RSNA DICOMs the synthetic sources hold."""
    from data.lists import read_list

    png = paths.covidx / "test" / read_list(paths.test_list).entries[0].filename
    dicom = next(iter(sorted((paths.sources / "rsna" / "stage_2_train_images").glob("*.dcm"))))
    return ["--checkpoint", str(checkpoint), str(png), str(dicom)]


def _print_outputs(paths: DemoPaths, run_dir: Path, seconds: float) -> None:
    print(f"\nDemo finished in {seconds:.0f} s. Everything is under {paths.out}/:")
    print(f"  dataset:      {paths.covidx}/ (train/, test/, train_COVIDx.txt, test_COVIDx.txt, report.json)")
    print(f"  training run: {run_dir}/ (cp-EE-LOSS.hdf5 per epoch, final_model.hdf5, saved_model/,")
    print("                run_config.json, training_log.csv, logs/ for TensorBoard, test_evaluation/)")
    print(f"  evaluations:  {paths.eval_final}/, {paths.eval_early}/ (metrics.json, predictions.csv, plots)")
    print(f"  comparison:   {paths.comparison}/")


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
    from training.config import run_folder_name

    paths = DemoPaths(args.out)
    started = time.perf_counter()
    _step("1. Build COVIDx from synthetic sources in the real formats", "create_covidx.py",
          create_covidx.main, create_covidx_argv(paths, synthetic_size=args.synthetic_size, seed=args.seed))
    name = f"demo-{args.model}-"
    _step("2. Train (SURFsara's recipe; --weights none because nothing is downloaded)", "train_keras.py",
          train_keras.main,
          train_argv(paths, name=name, model=args.model, head=args.head, img_size=args.img_size, lr=args.lr,
                     bs=args.bs, epochs=args.epochs, seed=args.seed))
    run_dir = paths.runs / run_folder_name(name, args.lr)  # the folder train_keras.py named
    final, early = run_dir / "final_model.hdf5", early_checkpoint(run_dir)
    _step("3a. Evaluate the final full model, with Grad-CAM overlays", "eval_keras.py", eval_keras.main,
          eval_argv(paths, checkpoint=final, out=paths.eval_final, gradcam=2))
    _step(f"3b. Evaluate the weights-only epoch checkpoint {early.name} (architecture from run_config.json)",
          "eval_keras.py", eval_keras.main, eval_argv(paths, checkpoint=early, out=paths.eval_early))
    _step("4. Compare the two from their prediction files", "compare.py", compare.main,
          compare_argv(paths, early=early))
    _step("5. Predict single images (PNG and DICOM)", "predict.py", predict.main,
          predict_argv(paths, checkpoint=final))
    _print_outputs(paths, run_dir, time.perf_counter() - started)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
