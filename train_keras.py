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

The ImageNet-transfer study's options (mixup, progressive resizing, one-cycle,
frozen-then-unfrozen backbone with discriminative learning rates, label
smoothing) are flags; without them the run is SURFsara's baseline
(docs/training.md). The library behind this script is training/.
"""
from __future__ import annotations

import argparse
import dataclasses
import logging
import math
import platform
import pprint
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

from common.cli import (
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
from data.images import RESIZE_METHODS
from data.lists import VERIFY_MODES
from training.checks import MAX_BATCH_MEMORY_SHARE, MAX_IMG_SIZE

if TYPE_CHECKING:  # the modules import TensorFlow, which --help must not wait for
    from models import ModelInfo, ModelSpec
    from training.config import RunConfig
    from training.evaluate import FinalEvaluation
    from training.strategy import Distribution
    from training.trainer import TrainResult

log = logging.getLogger("train_keras")

# SURFsara's `--regularizer` switch set `tf.keras.regularizers.l2(1e-3)` on every layer (to no effect).
SURFSARA_REGULARIZER = 1e-3

# models.HEADS, spelled out here because the registry imports Keras, which --help must not wait for
# (tests/test_train.py checks that the two agree).
HEADS = ("flatten", "avg", "max", "linear")


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
    _add_surfsara_flags(parser)
    _add_model_flags(parser)
    _add_training_flags(parser)
    _add_transfer_flags(parser)
    _add_hardware_flags(parser)
    _add_output_flags(parser)
    return parser.parse_args(argv)


def _add_surfsara_flags(parser: argparse.ArgumentParser) -> None:
    """SURFsara's flags, with their names, meanings and defaults."""
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


def _add_model_flags(parser: argparse.ArgumentParser) -> None:
    """The architecture and its initialisation."""
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
        choices=HEADS,
        help="pooling before the dense head: flatten (SURFsara's), avg or max pooling under it, or "
        "linear (global average pooling, then one dense softmax layer: torchvision's ResNet/DenseNet head)",
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


def _add_training_flags(parser: argparse.ArgumentParser) -> None:
    """Data, batches, augmentation and seeds."""
    train = parser.add_argument_group("training")
    train.add_argument("--seed", default=0, type=int, help="seed for weights, shuffling and augmentation")
    train.add_argument(
        "--resize",
        default="baseline",
        choices=RESIZE_METHODS,
        help="how images are resized to --img_size: baseline (SURFsara's cv2-style bilinear without "
        "antialiasing) or torchvision (the PyTorch studies' Resize((S, S)) on PIL images: Pillow's "
        "antialiased bilinear, bit for bit); recorded in run_config.json, so eval_keras.py and predict.py "
        "use it too",
    )
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


def _add_transfer_flags(parser: argparse.ArgumentParser) -> None:
    """The ImageNet-transfer study's options (docs/training.md); the defaults are SURFsara's."""
    transfer = parser.add_argument_group(
        "ImageNet-transfer options (the study's fastai training; see docs/training.md)"
    )
    transfer.add_argument(
        "--schedule",
        default="plateau",
        choices=["plateau", "onecycle", "cosine"],
        help="learning rate: plateau (SURFsara's ReduceLROnPlateau on val_loss), onecycle (fastai's "
        "fit_one_cycle, peak --lr) or cosine (--lr down to --min_lr), both per step and "
        "restarted at every phase (progressive stage, unfreezing)",
    )
    transfer.add_argument(
        "--min_lr",
        default=1e-6,
        type=non_negative_float,
        help="floor of the plateau schedule (SURFsara's) and final rate of the cosine schedule",
    )
    transfer.add_argument(
        "--onecycle_pct_start",
        default=0.25,
        type=float,
        help="onecycle: fraction of each phase's steps spent warming up to --lr (fastai v2; v1: 0.3)",
    )
    transfer.add_argument(
        "--onecycle_div",
        default=25.0,
        type=positive_float,
        help="onecycle: the warm-up starts at --lr / this (fastai's div)",
    )
    transfer.add_argument(
        "--onecycle_div_final",
        default=1e5,
        type=positive_float,
        help="onecycle: the phase ends at --lr / this (fastai v2's div_final; v1: 2.5e5)",
    )
    transfer.add_argument(
        "--mixup",
        default=0.0,
        type=non_negative_float,
        metavar="ALPHA",
        help="mixup with lambda ~ Beta(ALPHA, ALPHA) within each batch (fastai's default 0.4); "
        "0 turns it off",
    )
    transfer.add_argument(
        "--label_smoothing",
        default=0.0,
        type=non_negative_float,
        help="label smoothing of the cross-entropy (0 = off)",
    )
    transfer.add_argument(
        "--progressive",
        default=None,
        metavar="SIZES",
        help="progressive resizing stages, e.g. 64:2,128:2,224:6 (size:epochs) or 64,128,224 "
        "(--epochs split evenly); the last size must be --img_size; needs --head avg, max or linear",
    )
    transfer.add_argument(
        "--freeze_epochs",
        default=0,
        type=non_negative_int,
        help="train only the dense head (backbone frozen) for the first N epochs, then all layers",
    )
    transfer.add_argument(
        "--backbone_lr_mult",
        default=1.0,
        type=positive_float,
        help="learning-rate factor of the backbone relative to the head once it trains "
        "(discriminative learning rates, e.g. 0.1)",
    )
    transfer.add_argument(
        "--train_bn",
        default="on",
        choices=["on", "off"],
        help="on: batch normalisation layers keep training while the backbone is frozen "
        "(fastai's train_bn); off: they are frozen too (inference mode)",
    )


def _add_hardware_flags(parser: argparse.ArgumentParser) -> None:
    """Precision, compilation and distribution."""
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


def _add_output_flags(parser: argparse.ArgumentParser) -> None:
    """The run folder, checkpoints, resuming and the final evaluation."""
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


def resolve_config(
    args: argparse.Namespace, *, replicas: int, strategy_name: str, gpu: bool, num_workers: int = 1
) -> RunConfig:
    """Turn the namespace into a frozen RunConfig, checking everything checkable up front."""
    from training.checks import check_image_memory, check_input_files, check_output, check_transfer_options
    from training.config import RunConfig, run_folder_name

    _check_flag_values(args)
    output = Path(args.output)
    run_dir = output / run_folder_name(args.name, args.lr)
    check_input_files(
        lists=[("--trainfile", args.trainfile), ("--testfile", args.testfile), ("--valfile", args.valfile)],
        cache=args.cache,
        checkpoint=args.checkpoint,
        weights=args.weights,
    )
    check_output(output, run_dir)
    batch_size = _step_batch_size(args, replicas=replicas, strategy_name=strategy_name)
    check_image_memory(args.img_size, batch_size=batch_size, channels=args.channels)
    info = _model_info(args.model, img_size=args.img_size)
    progressive = check_transfer_options(
        epochs=args.epochs,
        lr=args.lr,
        schedule=args.schedule,
        min_lr=args.min_lr,
        onecycle_pct_start=args.onecycle_pct_start,
        label_smoothing=args.label_smoothing,
        freeze_epochs=args.freeze_epochs,
        random_backbone=args.weights.lower() == "none" and not args.checkpoint,
        progressive=args.progressive,
        head=args.head,
        img_size=args.img_size,
        min_size=info.min_size,
    )
    weights = _initial_weights(args, info)
    return RunConfig(
        model=_model_spec(args, name=info.name).to_dict(),
        weights=weights,
        checkpoint=str(args.checkpoint),
        batch_size=batch_size,
        output=str(output),
        run_dir=str(run_dir),
        progressive=progressive,
        mixed_precision={"on": True, "off": False, "auto": gpu}[args.mixed_precision],
        strategy=strategy_name,
        replicas=replicas,
        num_workers=num_workers,
        **_data_settings(args),
        **_optimisation_settings(args),
        **_output_settings(args),
        **_versions(),
    )


def _check_flag_values(args: argparse.Namespace) -> None:
    """Ranges argparse's types do not check."""
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


def _step_batch_size(args: argparse.Namespace, *, replicas: int, strategy_name: str) -> int:
    """The batch of one step across all replicas.

    --bs keeps SURFsara's meaning: the batch of one step across all replicas
    (multi_gpu_model split it the same way). The learning rate is never
    rescaled behind the user's back.
    """
    batch_size = args.bs_per_replica * replicas if args.bs_per_replica else args.bs
    if batch_size % replicas:
        raise ValueError(
            f"--bs must be divisible by the {replicas} replicas of the {strategy_name} strategy (or use "
            f"--bs_per_replica); received {batch_size}"
        )
    return batch_size


def _model_info(model: str, *, img_size: int) -> ModelInfo:
    """The registry entry of --model, which must take --img_size."""
    from models import get_model_info, list_models, resolve_model_name

    try:
        name = resolve_model_name(model)
    except ValueError:
        raise ValueError(
            f"--model must be a registered model, one of {', '.join(list_models())}; received {model!r}"
        ) from None
    info = get_model_info(name)
    if img_size < info.min_size:
        raise ValueError(
            f"--img_size is too small for --model {name}: it needs at least {info.min_size} px; "
            f"received {img_size}"
        )
    return info


def _initial_weights(args: argparse.Namespace, info: ModelInfo) -> str:
    """--weights as the run uses it: imagenet falls back to none for models without ImageNet weights."""
    from models import find_imagenet_weights

    weights = args.weights
    if weights.lower() == "imagenet" and info.imagenet is None:
        # SURFsara's `custom` model had no ImageNet weights either and started from random ones.
        log.warning(
            "--weights imagenet: model %s has no ImageNet weights; it starts from random weights "
            "(--weights none), as SURFsara's script did",
            info.name,
        )
        return "none"
    if weights.lower() == "imagenet" and args.checkpoint:
        # --checkpoint overwrites every weight, so the ImageNet file is neither needed nor read.
        log.info("--checkpoint %s replaces the ImageNet initialisation", args.checkpoint)
    elif weights.lower() == "imagenet":
        # Fail now, before the lists are read, when the file Keras needs is not on disk.
        find_imagenet_weights(info.name, info.imagenet, (args.img_size, args.img_size, 3))
    return weights


def _model_spec(args: argparse.Namespace, *, name: str) -> ModelSpec:
    """The architecture the flags describe (``models.ModelSpec``), for the registered ``name``."""
    from models import ModelSpec

    return ModelSpec(
        name=name,
        num_classes=3,
        input_shape=(args.img_size, args.img_size, args.channels),
        head=args.head,
        head_l2=args.head_l2,
        backbone_l2=args.regularizer,
        input_norm=args.input_norm,
    )


def _data_settings(args: argparse.Namespace) -> dict[str, Any]:
    """RunConfig's data fields: the lists, their images, the batch make-up, augmentation and mixup."""
    from data.augment import AugmentConfig

    return dict(
        trainfile=str(args.trainfile),
        testfile=str(args.testfile),
        data_path=str(args.data_path),
        val_split=0.0 if args.valfile else args.val_split,
        valfile=str(args.valfile),
        verify_images=args.verify_images,
        cache=str(args.cache),
        resize=args.resize,
        balance=args.balance == "covid",
        covid_per_batch=args.covid_per_batch,
        class_weights=tuple(args.class_weights),
        # Recorded in full: the run means these values, whatever later versions' defaults are.
        augment=None if args.no_augment else AugmentConfig().to_dict(),
        mixup=args.mixup,
    )


def _optimisation_settings(args: argparse.Namespace) -> dict[str, Any]:
    """RunConfig's optimisation fields, the ImageNet-transfer options among them."""
    return dict(
        lr=args.lr,
        epochs=args.epochs,
        steps_per_epoch=args.steps_per_epoch,
        seed=args.seed,
        deterministic=args.deterministic,
        xla=args.xla,
        sync_batchnorm=args.sync_batchnorm == "on",
        collective_timeout=args.collective_timeout,
        schedule=args.schedule,
        min_lr=args.min_lr,
        onecycle_pct_start=args.onecycle_pct_start,
        onecycle_div=args.onecycle_div,
        onecycle_div_final=args.onecycle_div_final,
        label_smoothing=args.label_smoothing,
        freeze_epochs=args.freeze_epochs,
        backbone_lr_mult=args.backbone_lr_mult,
        train_bn=args.train_bn == "on",
    )


def _output_settings(args: argparse.Namespace) -> dict[str, Any]:
    """RunConfig's output fields (the run folder itself is resolved with --output)."""
    return dict(
        name=args.name,
        keep_checkpoints=args.keep_checkpoints,
        full_checkpoints=args.full_checkpoints,
        argv=tuple(sys.argv[1:]),
    )


def _versions() -> dict[str, Any]:
    """The library versions recorded with a run."""
    import keras
    import tensorflow as tf

    return {"versions": {"tensorflow": tf.__version__, "keras": keras.__version__,
                         "python": platform.python_version()}}


@handle_errors
def main(argv: Sequence[str] | None = None) -> int:
    """Train, export and evaluate on the test list; returns the exit code."""
    args = parse_args(argv)
    setup_logging(args.verbose)
    # Heavy imports after argument parsing, so --help is instant.
    import keras

    from training.run_data import format_fingerprints, list_fingerprints
    from training.strategy import choose_strategy, gpu_available, op_determinism

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
    fingerprints = list_fingerprints(
        data_path=config.data_path, trainfile=config.trainfile, testfile=config.testfile,
        valfile=config.valfile,
    )
    config = dataclasses.replace(config, fingerprints=fingerprints)
    if distribution.is_chief:
        pprint.pprint({k: v for k, v in config.to_dict().items() if k not in ("argv", "versions")})
        print(f"Output: {config.run_dir}", flush=True)
        print(format_fingerprints(config.fingerprints), flush=True)
    with op_determinism(args.deterministic):
        return _train_and_evaluate(
            config, distribution=distribution, resume=args.resume == "auto", n_bootstrap=args.n_bootstrap
        )


def _train_and_evaluate(
    config: RunConfig, *, distribution: Distribution, resume: bool, n_bootstrap: int
) -> int:
    """Train, then (on the chief) evaluate the final model; each failure ends in one line and an exit code."""
    from training.evaluate import evaluate_final_model
    from training.failures import (
        INPUT_ERRORS,
        TRAINING_FAILURES,
        describe_evaluation_failure,
        describe_training_failure,
    )
    from training.preemption import EXIT_PREEMPTED, PreemptionWatcher
    from training.trainer import train

    watcher = PreemptionWatcher().install()
    try:
        result = train(
            config,
            distribution=distribution,
            resume=resume,
            preemption=watcher,
            verbose="auto" if sys.stdout.isatty() else 2,
        )
    except TRAINING_FAILURES as exc:
        failure = describe_training_failure(exc, config=config)
        if failure is None:
            raise
        print(failure.message, file=sys.stderr)
        return failure.exit_code
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
        evaluation = evaluate_final_model(
            result,
            testfile=config.testfile,
            testfile_fingerprint=config.fingerprints.get("--testfile"),
            batch_size=config.batch_size,
            n_bootstrap=n_bootstrap,
            seed=config.seed,
            resize=config.resize,
        )
    except INPUT_ERRORS as exc:
        failure = describe_evaluation_failure(exc, config=config, final_model=result.final_model)
        print(failure.message, file=sys.stderr)
        return failure.exit_code
    _print_summary(config, result, evaluation)
    return 0


def _print_summary(config: RunConfig, result: TrainResult, evaluation: FinalEvaluation) -> None:
    """The test report and the run folder's contents, ending with the disclaimer."""
    from evaluation.report import format_report

    print(f"\nTest list {config.testfile} ({len(result.test_entries)} images), final model:")
    print(format_report(evaluation.metrics, disclaimer=False))
    print(f"\nRun folder: {result.run_dir}")
    print(f"  per-epoch checkpoints: {len(result.checkpoints)} (cp-EE-LOSS.hdf5)")
    print(f"  final model: {result.final_model}  SavedModel: {result.saved_model}")
    print(f"  test evaluation: {evaluation.folder}")
    print(f"\n{DISCLAIMER}")


if __name__ == "__main__":
    raise SystemExit(main())
