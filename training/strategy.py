"""Choosing the tf.distribute strategy from what the machine offers.

One GPU (or none): the default strategy. Several GPUs on one node:
``MirroredStrategy`` over the visible GPUs, chosen automatically. Which GPUs are
visible is the job scheduler's business (``CUDA_VISIBLE_DEVICES`` set by SLURM
or the user); this code never sets it.
"""
from __future__ import annotations

import logging

import tensorflow as tf

log = logging.getLogger(__name__)

STRATEGIES = ("auto", "default", "mirrored")


def choose_strategy(kind: str = "auto") -> tf.distribute.Strategy:
    """Return the strategy for ``kind`` (``auto`` picks mirrored when >1 GPU is visible)."""
    if kind not in STRATEGIES:
        raise ValueError(f"--strategy must be one of {', '.join(STRATEGIES)}, received {kind!r}")
    gpus = tf.config.list_logical_devices("GPU")
    if kind == "auto":
        kind = "mirrored" if len(gpus) > 1 else "default"
    if kind == "mirrored":
        strategy = tf.distribute.MirroredStrategy()
        log.info("MirroredStrategy over %d replicas", strategy.num_replicas_in_sync)
        return strategy
    return tf.distribute.get_strategy()


def gpu_available() -> bool:
    """True when TensorFlow sees at least one GPU."""
    return bool(tf.config.list_physical_devices("GPU"))
