#!/usr/bin/env python3
"""Train a COVIDx classifier: SURFsara's Covid19-HPML baseline on tf.data and Keras 3.

SURFsara's command lines work unchanged, e.g.::

    python -u train_keras.py --trainfile train_COVIDx.txt --testfile test_COVIDx.txt \\
        --data_path /data/covidx --img_size 512 --lr 0.00002 --bs 8 --epochs 10 \\
        --name covid-net-resnet512- --model resnet50v2

Images are read from DATA_PATH/train and DATA_PATH/test. Everything the run
writes goes to OUTPUT/<name>lr<lr>/ (see training/trainer.py); re-running the
same command after a crash or kill (SIGKILL, SIGTERM, at any moment) resumes
from the last completed epoch, or from the step a SIGTERM stopped at, on the
same batches as an uninterrupted run (bit-identical on CPUs; see
data/pipeline.py for what is deterministic where).

The ImageNet-transfer study's recipes (mixup, progressive resizing, one-cycle,
frozen-then-unfrozen backbone with discriminative learning rates, label
smoothing) are options; without them the run is SURFsara's baseline
(docs/training.md).
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import logging
import math
import os
import platform
import pprint
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import NoReturn

from common.cli import (
    EXIT_FAILURE,
    USER_ERRORS,
    DefaultsHelpFormatter,
    UsageError,
    handle_errors,
    non_negative_float,
    non_negative_int,
    positive_float,
    positive_int,
    setup_logging,
)
from common.disclaimer import DISCLAIMER
from data.lists import VERIFY_MODES

log = logging.getLogger("train_keras")

# SURFsara's `--regularizer` switch set `tf.keras.regularizers.l2(1e-3)` on every layer (to no effect).
SURFSARA_REGULARIZER = 1e-3

# --img_size bound: about twice the largest public COVIDx source images (4,280 px in the real samples);
# larger sizes only upsample, and one such image would not fit in any GPU's memory through a backbone.
MAX_IMG_SIZE = 8192
# The input pipeline holds a few batches at once (decoded, augmented, prefetched, the one being fed):
# a batch of float32 images larger than this share of the memory cannot train.
MAX_BATCH_MEMORY_SHARE = 0.25


class _OneLineParser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are one ``error: ...`` line (via handle_errors), not usage + error."""

    def error(self, message: str) -> NoReturn:
        raise UsageError(f"{message} (see {self.prog} --help)")


def _learning_rate(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not (value > 0 and math.isfinite(value)):
        raise argparse.ArgumentTypeError(f"must be a finite number > 0, received {text}")
    return value


def _class_weights(text: str) -> tuple[float, float, float]:
    parts = [p for p in text.replace(",", " ").split() if p]
    try:
        values = tuple(float(p) for p in parts)
    except ValueError:
        values = ()
    if len(values) != 3 or any(v <= 0 for v in values):
        raise argparse.ArgumentTypeError(
            f"expected three positive weights for normal,pneumonia,COVID-19, received {text!r}"
        )
    return values  # type: ignore[return-value]


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Parse the command line; SURFsara's flags keep their names, meanings and defaults."""
    parser = _OneLineParser(
        prog="train_keras.py", description=__doc__, formatter_class=DefaultsHelpFormatter
    )
    base = parser.add_argument_group("SURFsara's flags (same names, meanings and defaults)")
    base.add_argument("--trainfile", default="train_COVIDx.txt", help="train list file")
    base.add_argument("--testfile", default="test_COVIDx.txt", help="test list file")
    base.add_argument("--data_path", default="data", help="folder holding train/ and test/ image folders")
    base.add_argument("--lr", default=0.00002, type=_learning_rate, help="learning rate (Adam, amsgrad)")
    base.add_argument("--img_size", default=512, type=positive_int,
                      help=f"image size (square), at most {MAX_IMG_SIZE} and such that one batch of float32 "
                           f"images takes at most {MAX_BATCH_MEMORY_SHARE * 100:.0f}%% of the memory")
    base.add_argument("--bs", default=8, type=positive_int,
                      help="batch size per step, across all GPUs (as multi_gpu_model split it)")
    base.add_argument(
        "--regularizer",
        default=0.0,
        type=float,
        nargs="?",
        const=SURFSARA_REGULARIZER,
        metavar="L2",
        help="L2 factor on every backbone kernel. SURFsara's flag was a switch meaning "
        f"{SURFSARA_REGULARIZER:g}, set after the model was built, where it had no effect: a bare "
        f"--regularizer now applies {SURFSARA_REGULARIZER:g}; 0 reproduces their runs",
    )
    base.add_argument("--epochs", default=10, type=positive_int, help="number of epochs")
    base.add_argument("--name", default="COVIDNet", help="run name; the run folder is <name>lr<lr>")
    base.add_argument(
        "--checkpoint",
        default="",
        help="start from these weights (.hdf5 as SURFsara saved them, full-model .h5, or .weights.h5)",
    )
    base.add_argument("--model", default="resnet50v2", help="backbone from the model registry (see models/)")
    base.add_argument(
        "--datapipeline",
        default="covidx",
        choices=["covidx", "chexpert"],
        help="which data pipeline (only covidx is supported)",
    )
    base.add_argument(
        "--val_split",
        default=0.1,
        type=float,
        help="fraction of the train list's patients held out for validation; "
        "0 validates on the test list as SURFsara did",
    )
    base.add_argument(
        "--valfile",
        default="",
        help="validation list whose images are in DATA_PATH/train (create_covidx.py "
        "--radiography-db writes val_COVIDx.txt); replaces --val_split",
    )

    model = parser.add_argument_group("model")
    model.add_argument(
        "--weights",
        default="imagenet",
        help="backbone initialisation: imagenet (the Keras file must already be on disk), "
        "none, or a path to a backbone weights file",
    )
    model.add_argument(
        "--head",
        default="flatten",
        choices=["flatten", "avg", "max"],
        help="pooling before the dense head (flatten is SURFsara's)",
    )
    model.add_argument("--head_l2", default=1e-4, type=float, help="L2 factor of the dense head's kernels")
    model.add_argument(
        "--input_norm",
        default=None,
        choices=["none", "imagenet"],
        help="input normalisation inside the model (default: the model's own default)",
    )
    model.add_argument(
        "--channels", default=3, type=int, choices=[1, 3], help="image channels fed to the model"
    )

    train = parser.add_argument_group("training")
    train.add_argument("--seed", default=0, type=int, help="seed for weights, shuffling and augmentation")
    train.add_argument(
        "--deterministic",
        action="store_true",
        help="TensorFlow op determinism (tf.config.experimental.enable_op_determinism): "
        "bit-identical runs and resumes on GPUs too, at some speed; CPU runs are "
        "reproducible without it",
    )
    train.add_argument(
        "--steps_per_epoch",
        default=None,
        type=positive_int,
        help="batches per epoch (default: one pass over the normal/pneumonia images)",
    )
    train.add_argument(
        "--balance",
        default="covid",
        choices=["covid", "none"],
        help="covid: COVID-19 images in every batch, as SURFsara's BalanceDataGenerator",
    )
    train.add_argument(
        "--covid_per_batch", default=1, type=positive_int, help="COVID-19 images per balanced batch"
    )
    train.add_argument(
        "--class_weights",
        default=(1.0, 1.0, 25.0),
        type=_class_weights,
        help="loss weights of normal,pneumonia,COVID-19",
    )
    train.add_argument("--no_augment", action="store_true", help="turn off SURFsara's augmentation")
    train.add_argument(
        "--verify_images",
        default="header",
        choices=VERIFY_MODES,
        help="check the lists' images before training; any problem stops the run before "
        "its first step, naming the files. header (fast: two small reads per file): "
        "each file exists, is not empty, starts like a PNG/JPEG/BMP/GIF and ends like a "
        "complete one (PNG IEND chunk, JPEG FFD9 marker, GIF trailer, BMP size), which "
        "finds files cut short; full: also decodes every image (or hashes every cache "
        "shard); none",
    )
    train.add_argument(
        "--cache",
        default="",
        help="read the images from this preprocessed cache (create_covidx.py --cache SIZE) "
        "instead of DATA_PATH/train and DATA_PATH/test",
    )

    recipe = parser.add_argument_group(
        "training recipes (the ImageNet-transfer study's fastai recipes; see docs/training.md)"
    )
    recipe.add_argument(
        "--schedule",
        default="plateau",
        choices=["plateau", "onecycle", "cosine"],
        help="learning rate: plateau (SURFsara's ReduceLROnPlateau on val_loss), onecycle (fastai's "
        "fit_one_cycle, peak --lr) or cosine (--lr down to --min_lr), both per step and "
        "restarted at every phase (progressive stage, unfreezing)",
    )
    recipe.add_argument(
        "--min_lr",
        default=1e-6,
        type=non_negative_float,
        help="floor of the plateau schedule (SURFsara's) and final rate of the cosine schedule",
    )
    recipe.add_argument(
        "--onecycle_pct_start",
        default=0.25,
        type=float,
        help="onecycle: fraction of each phase's steps spent warming up to --lr (fastai v2; v1: 0.3)",
    )
    recipe.add_argument(
        "--onecycle_div",
        default=25.0,
        type=positive_float,
        help="onecycle: the warm-up starts at --lr / this (fastai's div)",
    )
    recipe.add_argument(
        "--onecycle_div_final",
        default=1e5,
        type=positive_float,
        help="onecycle: the phase ends at --lr / this (fastai v2's div_final; v1: 2.5e5)",
    )
    recipe.add_argument(
        "--mixup",
        default=0.0,
        type=non_negative_float,
        metavar="ALPHA",
        help="mixup with lambda ~ Beta(ALPHA, ALPHA) within each batch (fastai's default 0.4); "
        "0 turns it off",
    )
    recipe.add_argument(
        "--label_smoothing",
        default=0.0,
        type=non_negative_float,
        help="label smoothing of the cross-entropy (0 = off)",
    )
    recipe.add_argument(
        "--progressive",
        default=None,
        metavar="SIZES",
        help="progressive resizing stages, e.g. 64:2,128:2,224:6 (size:epochs) or 64,128,224 "
        "(--epochs split evenly); the last size must be --img_size; needs --head avg or max",
    )
    recipe.add_argument(
        "--freeze_epochs",
        default=0,
        type=non_negative_int,
        help="train only the dense head (backbone frozen) for the first N epochs, then all layers",
    )
    recipe.add_argument(
        "--backbone_lr_mult",
        default=1.0,
        type=positive_float,
        help="learning-rate factor of the backbone relative to the head once it trains "
        "(discriminative learning rates, e.g. 0.1)",
    )
    recipe.add_argument(
        "--train_bn",
        default="on",
        choices=["on", "off"],
        help="on: batch normalisation layers keep training while the backbone is frozen "
        "(fastai's train_bn); off: they are frozen too (inference mode)",
    )

    hardware = parser.add_argument_group("hardware")
    hardware.add_argument(
        "--mixed_precision",
        default="auto",
        choices=["auto", "on", "off"],
        help="mixed_float16 compute (auto: on when a GPU is present)",
    )
    hardware.add_argument("--xla", action="store_true", help="compile the train step with XLA")
    hardware.add_argument(
        "--strategy",
        default="auto",
        choices=["auto", "default", "mirrored", "multiworker"],
        help="tf.distribute strategy (auto: multiworker under a multi-task SLURM step or "
        "TF_CONFIG, else mirrored when more than one GPU is visible, else default)",
    )
    hardware.add_argument(
        "--bs_per_replica",
        default=None,
        type=positive_int,
        help="batch per replica (GPU); the step batch becomes this x the replicas, instead of --bs",
    )
    hardware.add_argument(
        "--sync_batchnorm",
        default="on",
        choices=["on", "off"],
        help="with several replicas, batch normalisation statistics over the global batch "
        "(on: same result as one GPU with the same --bs; off: per-replica statistics, "
        "as multi_gpu_model had, fewer all-reduces)",
    )
    hardware.add_argument(
        "--collective_timeout",
        default=600,
        type=positive_float,
        help="multi-worker jobs: seconds without a finished step (the first step of each fit "
        "gets at least 900) before the job stops with an error, e.g. when a worker is "
        "lost; must exceed the chief's end-of-epoch save",
    )

    out = parser.add_argument_group("output and resuming")
    out.add_argument("--output", default="./output", help="parent folder of the run folder")
    out.add_argument(
        "--keep_checkpoints",
        default=0,
        type=int,
        help="keep only the newest N per-epoch checkpoints (0 keeps all; ~2 GB each at 512 px)",
    )
    out.add_argument(
        "--full_checkpoints",
        action="store_true",
        help="per-epoch checkpoints hold the full model instead of weights only",
    )
    out.add_argument(
        "--resume",
        default="auto",
        choices=["auto", "off"],
        help="auto: continue the run found in the run folder; off: start it over",
    )
    out.add_argument(
        "--n_bootstrap",
        default=2000,
        type=int,
        help="bootstrap resamples for the confidence intervals of the final test evaluation",
    )
    out.add_argument("-v", "--verbose", action="count", default=0, help="more logging")
    return parser.parse_args(argv)


def resolve_config(
    args: argparse.Namespace, *, replicas: int, strategy_name: str, gpu: bool, num_workers: int = 1
):
    """Turn the namespace into a frozen RunConfig, checking everything checkable up front."""
    import keras
    import tensorflow as tf

    from models import ModelSpec, find_imagenet_weights, get_model_info, list_models, resolve_model_name
    from training.config import RunConfig, run_folder_name

    if args.datapipeline != "covidx":
        raise ValueError(
            "--datapipeline chexpert is not supported: SURFsara's branch read hard-coded "
            "../data/*_positive.txt files; only covidx lists are (received --datapipeline chexpert)"
        )
    if not 0.0 <= args.val_split < 1.0:
        raise ValueError(f"--val_split must be in [0, 1), received {args.val_split}")
    if not (0 <= args.regularizer < math.inf and 0 <= args.head_l2 < math.inf):
        raise ValueError(
            f"--regularizer and --head_l2 must be finite numbers >= 0, received "
            f"{args.regularizer}, {args.head_l2}"
        )
    if args.keep_checkpoints < 0:
        raise ValueError(f"--keep_checkpoints must be >= 0, received {args.keep_checkpoints}")
    if args.cache and not Path(args.cache).is_dir():
        raise FileNotFoundError(f"--cache {args.cache} does not exist")
    for flag in ("trainfile", "testfile", "valfile"):
        if getattr(args, flag) and not Path(getattr(args, flag)).is_file():
            raise FileNotFoundError(f"--{flag} {getattr(args, flag)} does not exist")
    if args.checkpoint:
        _check_checkpoint_file(Path(args.checkpoint))
    output = Path(args.output)
    _check_output(output, output / run_folder_name(args.name, args.lr))
    weights = args.weights
    if weights.lower() not in ("imagenet", "none") and not Path(weights).is_file():
        raise FileNotFoundError(f"--weights {weights} is neither imagenet, none nor an existing file")
    # --bs keeps SURFsara's meaning: the batch of one step across all replicas (multi_gpu_model
    # split it the same way). The learning rate is never rescaled behind the user's back.
    batch_size = args.bs_per_replica * replicas if args.bs_per_replica else args.bs
    if batch_size % replicas:
        raise ValueError(
            f"--bs {batch_size} must be divisible by the {replicas} replicas of the "
            f"{strategy_name} strategy (or use --bs_per_replica)"
        )
    _check_image_memory(args.img_size, batch_size=batch_size, channels=args.channels)
    try:
        name = resolve_model_name(args.model)
    except ValueError:
        raise ValueError(
            f"--model {args.model!r} is not a registered model; choose one of {', '.join(list_models())}"
        ) from None
    info = get_model_info(name)
    if args.img_size < info.min_size:
        raise ValueError(
            f"--img_size {args.img_size} is too small for --model {name}: it needs at least "
            f"{info.min_size} px"
        )
    progressive = _resolve_recipe(args, min_size=info.min_size)
    if weights.lower() == "imagenet" and info.imagenet is None:
        # SURFsara's `custom` model had no ImageNet weights either and started from random ones.
        log.warning(
            "--weights imagenet: model %s has no ImageNet weights; it starts from random weights "
            "(--weights none), as SURFsara's script did",
            name,
        )
        weights = "none"
    if weights.lower() == "imagenet" and args.checkpoint:
        # --checkpoint overwrites every weight, so the ImageNet file is neither needed nor read.
        log.info("--checkpoint %s replaces the ImageNet initialisation", args.checkpoint)
    elif weights.lower() == "imagenet":
        # Fail now, before the lists are read, when the file Keras needs is not on disk.
        find_imagenet_weights(name, info.imagenet, (args.img_size, args.img_size, 3))
    spec = ModelSpec(
        name=name,
        num_classes=3,
        input_shape=(args.img_size, args.img_size, args.channels),
        head=args.head,
        head_l2=args.head_l2,
        backbone_l2=args.regularizer,
        input_norm=args.input_norm,
    )
    mixed = {"on": True, "off": False, "auto": gpu}[args.mixed_precision]
    return RunConfig(
        trainfile=str(args.trainfile),
        testfile=str(args.testfile),
        data_path=str(args.data_path),
        val_split=0.0 if args.valfile else args.val_split,
        valfile=str(args.valfile),
        verify_images=args.verify_images,
        balance=args.balance == "covid",
        covid_per_batch=args.covid_per_batch,
        class_weights=tuple(args.class_weights),
        augment=not args.no_augment,
        model=spec.to_dict(),
        weights=weights,
        checkpoint=str(args.checkpoint),
        lr=args.lr,
        batch_size=batch_size,
        epochs=args.epochs,
        steps_per_epoch=args.steps_per_epoch,
        seed=args.seed,
        deterministic=args.deterministic,
        mixed_precision=mixed,
        xla=args.xla,
        sync_batchnorm=args.sync_batchnorm == "on",
        collective_timeout=args.collective_timeout,
        output=str(output),
        name=args.name,
        run_dir=str(output / run_folder_name(args.name, args.lr)),
        keep_checkpoints=args.keep_checkpoints,
        full_checkpoints=args.full_checkpoints,
        strategy=strategy_name,
        replicas=replicas,
        global_batch_size=batch_size,
        num_workers=num_workers,
        cache=str(args.cache),
        schedule=args.schedule,
        min_lr=args.min_lr,
        onecycle_pct_start=args.onecycle_pct_start,
        onecycle_div=args.onecycle_div,
        onecycle_div_final=args.onecycle_div_final,
        mixup=args.mixup,
        label_smoothing=args.label_smoothing,
        progressive=progressive,
        freeze_epochs=args.freeze_epochs,
        backbone_lr_mult=args.backbone_lr_mult,
        train_bn=args.train_bn == "on",
        argv=tuple(sys.argv[1:]),
        versions={
            "tensorflow": tf.__version__,
            "keras": keras.__version__,
            "python": platform.python_version(),
        },
    )


def _check_checkpoint_file(path: Path) -> None:
    """--checkpoint must be a Keras HDF5 file named as Keras reads it; checked before any list is read."""
    from training.checkpoints import describe_hdf5

    if not path.is_file():
        raise FileNotFoundError(f"--checkpoint {path} does not exist")
    try:
        kind = describe_hdf5(path)
    except ValueError as exc:
        raise ValueError(
            f"--checkpoint: {exc}; expected a .hdf5/.h5 weights or model file "
            f"(SURFsara's cp-EE-L.hdf5, final_model.hdf5) or a Keras 3 .weights.h5"
        ) from None
    if kind == "weights3" and not path.name.endswith(".weights.h5"):
        raise ValueError(f"--checkpoint {path} holds Keras 3 weights; its name must end in .weights.h5")
    if kind != "weights3" and (path.suffix not in (".h5", ".hdf5") or path.name.endswith(".weights.h5")):
        raise ValueError(
            f"--checkpoint {path} holds Keras 2-layout HDF5 weights; its name must end in .hdf5 or .h5"
        )


def _check_output(output: Path, run_dir: Path) -> None:
    """The run folder must be creatable: no file where --output or the run folder (or a parent) would be."""
    for folder, what in ((run_dir, f"run folder {run_dir}"), (output, f"--output {output}")):
        if folder.exists() and not folder.is_dir():
            raise NotADirectoryError(f"{what} is a file, not a folder; received --output {output}")
    parent = output.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        raise NotADirectoryError(f"--output {output}: {parent} is a file, not a folder")


def _memory_bytes() -> int | None:
    """Physical memory, or the cgroup limit when lower (a SLURM job's --mem); None when unknown."""
    try:
        total = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None
    for limit_file in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
        try:
            limit = int(Path(limit_file).read_text().strip())
        except (OSError, ValueError):
            continue
        total = min(total, limit)
    return total


def _check_image_memory(img_size: int, *, batch_size: int, channels: int) -> None:
    """Refuse image sizes that cannot train here, before anything is read or created."""
    if img_size > MAX_IMG_SIZE:
        raise ValueError(
            f"--img_size must be at most {MAX_IMG_SIZE} px (about twice the largest COVIDx "
            f"source images; larger sizes only upsample), received {img_size}"
        )
    memory = _memory_bytes()
    batch_bytes = batch_size * img_size * img_size * channels * 4
    if memory and batch_bytes > MAX_BATCH_MEMORY_SHARE * memory:
        raise ValueError(
            f"--img_size {img_size} with a batch of {batch_size}: one batch of float32 images is "
            f"{batch_bytes / 2**30:.1f} GiB, more than {MAX_BATCH_MEMORY_SHARE:.0%} of this machine's "
            f"{memory / 2**30:.1f} GiB of memory (the input pipeline holds several batches); lower "
            "--img_size "
            "or --bs"
        )


def _resolve_recipe(args: argparse.Namespace, *, min_size: int) -> tuple[tuple[int, int], ...]:
    """Check the recipe flags; returns the progressive stages ``((size, epochs), ...)``."""
    from training.recipes import parse_progressive

    if not 0 <= args.label_smoothing < 1:
        raise ValueError(f"--label_smoothing must be in [0, 1), received {args.label_smoothing}")
    if args.freeze_epochs > args.epochs:
        raise ValueError(f"--freeze_epochs {args.freeze_epochs} is more than --epochs {args.epochs}")
    if args.schedule == "onecycle" and not 0 < args.onecycle_pct_start < 1:
        raise ValueError(f"--onecycle_pct_start must be in (0, 1), received {args.onecycle_pct_start}")
    if args.schedule == "cosine" and args.min_lr >= args.lr:
        raise ValueError(
            f"--schedule cosine decays from --lr to --min_lr: --min_lr {args.min_lr} must be below "
            f"--lr {args.lr}"
        )
    if args.freeze_epochs and args.weights.lower() == "none" and not args.checkpoint:
        log.warning(
            "--freeze_epochs %d with --weights none trains the head on a random, frozen backbone",
            args.freeze_epochs,
        )
    if not (args.progressive or "").strip():
        return ()
    if args.head == "flatten":
        raise ValueError(
            "--progressive needs --head avg or max: the flatten head's dense kernel depends on the image "
            "size "
            "(fastai's models pool before their head); received --head flatten"
        )
    return parse_progressive(args.progressive, epochs=args.epochs, img_size=args.img_size, min_size=min_size)


def list_fingerprints(config) -> dict[str, str]:
    """``{flag: fingerprint}`` of the lists the run reads (data/fingerprint.py), for run_config.json.

    Image hashes come from ``SHA256SUMS`` beside the images (create_covidx.py
    writes it) for files not modified since, else from reading the files. A
    list whose images are not all there (a run from ``--cache``) is left out
    with a log line: its fingerprint cannot be computed.
    """
    import time

    from data.fingerprint import fingerprint_list_files
    from data.lists import read_list

    data_path = Path(config.data_path)
    lists = [("--trainfile", config.trainfile, data_path / "train"),
             ("--valfile", config.valfile, data_path / "train"),
             ("--testfile", config.testfile, data_path / "test")]
    found: dict[str, str] = {}
    start = time.perf_counter()
    hashed_total = 0
    for flag, list_file, image_dir in lists:
        if not list_file:
            continue
        entries = read_list(list_file).entries
        if not all((image_dir / e.filename).is_file() for e in entries):
            log.debug("%s %s: not every image is in %s (training from --cache?): no fingerprint recorded",
                     flag, list_file, image_dir)
            continue
        found[flag], hashed = fingerprint_list_files(entries, image_dir, dataset_dir=data_path)
        hashed_total += hashed
    log.debug("list fingerprints in %.2f s (%d images read, the others from SHA256SUMS)",
             time.perf_counter() - start, hashed_total)
    return found


def format_fingerprints(fingerprints: dict[str, str]) -> str:
    """The short fingerprints as printed at the start of a run."""
    from data.fingerprint import short

    if not fingerprints:
        return "List fingerprints: none (the images are not in DATA_PATH)"
    return "List fingerprints: " + ", ".join(f"{flag} {short(fp)}" for flag, fp in fingerprints.items())


@handle_errors
def main(argv: Sequence[str] | None = None) -> int:
    """Train, export and evaluate on the test list; returns the exit code."""
    args = parse_args(argv)
    setup_logging(args.verbose)
    # Heavy imports after argument parsing, so --help is instant.
    import keras

    from training.strategy import choose_strategy, gpu_available

    # MultiWorkerMirroredStrategy must exist before any other TensorFlow work.
    distribution = choose_strategy(args.strategy)
    keras.utils.set_random_seed(args.seed)
    config = resolve_config(
        args,
        replicas=distribution.replicas,
        strategy_name=distribution.kind,
        gpu=gpu_available(),
        num_workers=distribution.num_workers,
    )
    config = dataclasses.replace(config, fingerprints=list_fingerprints(config))
    if distribution.is_chief:
        pprint.pprint({k: v for k, v in config.to_dict().items() if k not in ("argv", "versions")})
        print(f"Output: {config.run_dir}", flush=True)
        print(format_fingerprints(config.fingerprints), flush=True)
    with _op_determinism(args.deterministic):
        return _train_and_evaluate(config, args, distribution)


@contextlib.contextmanager
def _op_determinism(enabled: bool) -> Iterator[None]:
    """TensorFlow op determinism for this run only (put back as it was, for callers of main in-process)."""
    from tensorflow.python.framework import config as tf_config

    before = tf_config.is_op_determinism_enabled()
    if enabled:
        tf_config.enable_op_determinism()
    try:
        yield
    finally:
        if enabled and not before:
            tf_config.disable_op_determinism()


def _train_and_evaluate(config, args: argparse.Namespace, distribution) -> int:
    """Train, then (on the chief) evaluate the final model; each failure ends in one line and an exit code."""
    import tensorflow as tf

    from training.callbacks import TrainingDiverged
    from training.preemption import EXIT_PREEMPTED, PreemptionWatcher, TrainingInterrupted
    from training.trainer import train

    watcher = PreemptionWatcher().install()
    try:
        result = train(
            config,
            distribution=distribution,
            resume=args.resume == "auto",
            preemption=watcher,
            verbose="auto" if sys.stdout.isatty() else 2,
        )
    except TrainingDiverged as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    except TrainingInterrupted as exc:
        print(f"stopped: {exc}", file=sys.stderr)
        return EXIT_PREEMPTED
    except (
        tf.errors.DeadlineExceededError,
        tf.errors.UnavailableError,
        tf.errors.CancelledError,
        tf.errors.AbortedError,
    ) as exc:
        print(
            f"error: lost contact with another worker ({type(exc).__name__}: {_op_error_summary(exc)}); the "
            "job stops - re-run it to resume from the last saved epoch",
            file=sys.stderr,
        )
        return EXIT_FAILURE
    except (tf.errors.InvalidArgumentError, tf.errors.NotFoundError, tf.errors.DataLossError) as exc:
        # tf.data reports an image it cannot decode without its file name ("Invalid PNG data, size 1030").
        log.debug("full traceback", exc_info=True)
        print(
            f"error: training stopped: {_input_error(config, exc, during='training')}; "
            f"{_saved_state(config)}",
            file=sys.stderr,
        )
        return EXIT_FAILURE
    except OSError as exc:
        if isinstance(exc, USER_ERRORS):
            raise
        log.debug("full traceback", exc_info=True)
        print(
            f"error: training stopped: writing in {config.run_dir} failed ({exc}); {_saved_state(config)}",
            file=sys.stderr,
        )
        return EXIT_FAILURE
    finally:
        watcher.uninstall()
    if watcher.requested:
        # SIGTERM came after the last step (during the export): the time limit is near, so stop now;
        # the re-run finds every epoch done and only exports and evaluates.
        print(
            f"stopped: {watcher.signal_name} after the last epoch; re-run the same command for the final "
            "export and test evaluation",
            file=sys.stderr,
        )
        return EXIT_PREEMPTED
    if not distribution.is_chief:
        print(f"worker {distribution.worker_index} finished", flush=True)
        return 0
    try:
        return _evaluate_on_test(config, result, n_bootstrap=args.n_bootstrap, seed=args.seed)
    except (tf.errors.InvalidArgumentError, tf.errors.NotFoundError, tf.errors.DataLossError) as exc:
        log.debug("full traceback", exc_info=True)
        print(
            f"error: the final test evaluation stopped: {_input_error(config, exc, during='test')}; "
            f"training is complete ({result.final_model}): re-run the same command to export and evaluate "
            "again",
            file=sys.stderr,
        )
        return EXIT_FAILURE


def _saved_state(config) -> str:
    """What a re-run resumes from, for the message of a stopped run."""
    from training.checkpoints import find_resume_state

    found = find_resume_state(Path(config.run_dir) / "resume")
    if found is None:
        return "no epoch was completed yet: re-running the same command starts the run over"
    epoch, step = int(found[1]["epoch"]), int(found[1].get("step", 0) or 0)
    where = f"epoch {epoch}" + (f" and step {step} of the next" if step else "")
    return f"the state after {where} is saved in {found[0]}: re-running the same command resumes from there"


def _input_error(config, exc, *, during: str) -> str:
    """Name the images behind a TensorFlow input error by decoding the lists the run reads.

    Decoding every image costs minutes on the full COVIDx lists, so it is only
    paid on this error path (the header check before training finds files cut short).
    """
    from data.pipeline import find_image_problems, load_entries

    summary = _op_error_summary(exc)
    if config.cache:
        return (
            f"reading the cache {config.cache} failed ({summary}); check it with --verify_images full "
            "or rebuild it"
        )
    data_path = Path(config.data_path)
    if during == "test":
        lists = [("--testfile", config.testfile, data_path / "test")]
    else:
        lists = [("--trainfile", config.trainfile, data_path / "train")]
        if config.valfile:
            lists.append(("--valfile", config.valfile, data_path / "train"))
        elif config.val_split == 0:
            lists.append(("--testfile", config.testfile, data_path / "test"))  # the validation list
    found = []
    for flag, list_file, image_dir in lists:
        entries = load_entries(list_file, image_dir, verify="none", what=flag)
        found += [
            (flag, image_dir / e.filename, reason)
            for e, reason in find_image_problems(entries, image_dir, verify="full")
        ]
    if not found:
        return (
            f"TensorFlow reported {type(exc).__name__}: {summary}, and every image of the lists decodes "
            "(run with -v for the traceback)"
        )
    named = "; ".join(f"{path} ({flag}): {reason}" for flag, path, reason in found[:3])
    more = f" (and {len(found) - 3} more)" if len(found) > 3 else ""
    return (
        f"{len(found)} image(s) cannot be decoded: {named}{more}; replace them or remove them from the list"
    )


def _op_error_summary(exc, limit: int = 300) -> str:
    """The informative part of a TensorFlow error: its status line, not "Graph execution error:"."""
    lines = [line.strip() for line in (exc.message or "").splitlines() if line.strip()]
    useful = [
        line
        for line in lines
        if not line.startswith(("Graph execution error", "Detected at node", "File ", "[[", "{{"))
    ]
    return (useful[-1] if useful else lines[0] if lines else type(exc).__name__)[:limit]


def _evaluate_on_test(config, result, *, n_bootstrap: int, seed: int) -> int:
    """The baseline ended with a per-image predict loop over the test list; same report, batched."""
    import keras

    from evaluation.inference import entries_predictions, predict_images
    from evaluation.report import evaluate_predictions, format_report, write_evaluation_files

    model = keras.models.load_model(result.final_model, compile=False)
    _, img_size, _, channels = model.input_shape
    batch_size = max(config.batch_size, 32)
    probabilities = predict_images(
        model.predict_on_batch,
        result.test_entries,
        result.test_images,
        img_size=img_size,
        channels=channels,
        batch_size=batch_size,
    )
    predictions = entries_predictions(result.test_entries, probabilities, source=config.testfile)
    metrics = evaluate_predictions(
        labels=predictions.labels,
        probabilities=predictions.probabilities,
        patient_ids=predictions.patient_ids,
        n_bootstrap=n_bootstrap,
        seed=seed,
    )
    if "--testfile" in config.fingerprints:
        metrics["evaluated"] = {"testfile": config.testfile,
                                "testfile_fingerprint": config.fingerprints["--testfile"]}
    eval_dir = result.run_dir / "test_evaluation"
    write_evaluation_files(eval_dir, predictions=predictions, metrics=metrics)
    print(f"\nTest list {config.testfile} ({len(result.test_entries)} images), final model:")
    print(format_report(metrics, disclaimer=False))
    print(f"\nRun folder: {result.run_dir}")
    print(f"  per-epoch checkpoints: {len(result.checkpoints)} (cp-EE-LOSS.hdf5)")
    print(f"  final model: {result.final_model}  SavedModel: {result.saved_model}")
    print(f"  test evaluation: {eval_dir}")
    print(f"\n{DISCLAIMER}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
