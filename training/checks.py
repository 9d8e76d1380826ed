"""Checks of a run's settings made before any list is read or anything is created.

``train_keras.py``'s ``resolve_config`` calls these with plain values; each
raises ``ValueError`` / ``FileNotFoundError`` / ``NotADirectoryError`` naming
the flag, what is allowed and what was received, which the script turns into
one ``error:`` line. Only the standard library is imported here, so the
limits below can appear in ``--help`` without starting TensorFlow.
"""
from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path

log = logging.getLogger(__name__)

# --img_size bound: about twice the largest public COVIDx source images (4,280 px in the real samples);
# larger sizes only upsample, and one such image would not fit in any GPU's memory through a backbone.
MAX_IMG_SIZE = 8192
# The input pipeline holds a few batches at once (decoded, augmented, prefetched, the one being fed):
# a batch of float32 images larger than this share of the memory cannot train.
MAX_BATCH_MEMORY_SHARE = 0.25

# Heads that pool before their dense layers, so that their weights do not depend on the image size.
POOLING_HEADS: tuple[str, ...] = ("avg", "max", "linear")


def memory_bytes() -> int | None:
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


def check_image_memory(img_size: int, *, batch_size: int, channels: int) -> None:
    """Refuse image sizes that cannot train here, before anything is read or created."""
    if img_size > MAX_IMG_SIZE:
        raise ValueError(
            f"--img_size must be at most {MAX_IMG_SIZE} px (about twice the largest COVIDx "
            f"source images; larger sizes only upsample), received {img_size}"
        )
    memory = memory_bytes()
    batch_bytes = batch_size * img_size * img_size * channels * 4
    if memory and batch_bytes > MAX_BATCH_MEMORY_SHARE * memory:
        raise ValueError(
            f"--img_size {img_size} with a batch of {batch_size}: one batch of float32 images is "
            f"{batch_bytes / 2**30:.1f} GiB, more than {MAX_BATCH_MEMORY_SHARE:.0%} of this machine's "
            f"{memory / 2**30:.1f} GiB of memory (the input pipeline holds several batches); lower "
            f"--img_size or --bs (received --img_size {img_size}, a step batch of {batch_size})"
        )


def check_checkpoint_file(path: Path) -> None:
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
        raise ValueError(
            f"--checkpoint {path} holds Keras 3 weights; its name must end in .weights.h5, received "
            f"{path.name}"
        )
    if kind != "weights3" and (path.suffix not in (".h5", ".hdf5") or path.name.endswith(".weights.h5")):
        raise ValueError(
            f"--checkpoint {path} holds Keras 2-layout HDF5 weights; its name must end in .hdf5 or .h5, "
            f"received {path.name}"
        )


def check_output(output: Path, run_dir: Path) -> None:
    """The run folder must be creatable: no file where --output or the run folder (or a parent) would be."""
    for folder, what in ((run_dir, f"run folder {run_dir}"), (output, f"--output {output}")):
        if folder.exists() and not folder.is_dir():
            raise NotADirectoryError(f"{what} is a file, not a folder; received --output {output}")
    parent = output.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        raise NotADirectoryError(
            f"--output must be a folder or a path under one, but {parent} is a file, not a folder; "
            f"received --output {output}"
        )


def check_input_files(
    *, lists: Sequence[tuple[str, str]], cache: str, checkpoint: str, weights: str
) -> None:
    """The files a run names exist: ``lists`` as ``(flag, path)`` (empty paths skipped), the cache folder,
    the --checkpoint file (and its kind) and a --weights file."""
    if cache and not Path(cache).is_dir():
        raise FileNotFoundError(f"--cache {cache} does not exist")
    for flag, path in lists:
        if path and not Path(path).is_file():
            raise FileNotFoundError(f"{flag} {path} does not exist")
    if checkpoint:
        check_checkpoint_file(Path(checkpoint))
    if weights.lower() not in ("imagenet", "none") and not Path(weights).is_file():
        raise FileNotFoundError(f"--weights {weights} is neither imagenet, none nor an existing file")


def check_transfer_options(
    *,
    epochs: int,
    lr: float,
    schedule: str,
    min_lr: float,
    onecycle_pct_start: float,
    label_smoothing: float,
    freeze_epochs: int,
    random_backbone: bool,
    progressive: str | None,
    head: str,
    img_size: int,
    min_size: int,
) -> tuple[tuple[int, int], ...]:
    """Check the ImageNet-transfer study's options; returns the progressive stages ``((size, epochs), ...)``.

    ``random_backbone``: the backbone starts from random weights (``--weights
    none`` without ``--checkpoint``), which only earns a warning with
    ``freeze_epochs``.
    """
    from training.phases import parse_progressive

    if not 0 <= label_smoothing < 1:
        raise ValueError(f"--label_smoothing must be in [0, 1), received {label_smoothing}")
    if freeze_epochs > epochs:
        raise ValueError(
            f"--freeze_epochs must be at most --epochs {epochs}; received {freeze_epochs}, more than "
            f"--epochs {epochs}"
        )
    if schedule == "onecycle" and not 0 < onecycle_pct_start < 1:
        raise ValueError(f"--onecycle_pct_start must be in (0, 1), received {onecycle_pct_start}")
    if schedule == "cosine" and min_lr >= lr:
        raise ValueError(
            f"--schedule cosine decays from --lr to --min_lr: --min_lr must be below --lr {lr}, "
            f"received --min_lr {min_lr}"
        )
    if freeze_epochs and random_backbone:
        log.warning("--freeze_epochs %d with --weights none trains the head on a random, frozen backbone",
                    freeze_epochs)
    if not (progressive or "").strip():
        return ()
    if head not in POOLING_HEADS:
        raise ValueError(
            f"--progressive needs a pooling head (--head {', '.join(POOLING_HEADS)}): the flatten head's "
            "dense kernel depends on the image size (fastai's models pool before their head); received "
            f"--head {head}"
        )
    return parse_progressive(progressive, epochs=epochs, img_size=img_size, min_size=min_size)
