"""Command-line arguments shared by ``eval_keras.py`` and ``predict.py``.

Light on purpose: ``--help`` must not wait for TensorFlow or Keras.
"""
from __future__ import annotations

import argparse

# models.HEADS, spelled out because the registry imports Keras (tests/test_eval_keras.py checks they agree).
HEADS: tuple[str, ...] = ("flatten", "avg", "max", "linear")


def add_architecture_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``--model``/``--head``/``--channels`` group that describes a weights-only checkpoint.

    Defaults are suppressed: an absent flag means "take it from run_config.json
    beside the weights" (:func:`evaluation.loaders.load_predictor`).
    """
    arch = parser.add_argument_group(
        "architecture of a weights-only checkpoint",
        "Only used when there is no run_config.json beside the weights file (with one, they may be "
        "given only if they agree with it).",
    )
    arch.add_argument(
        "--model",
        default=argparse.SUPPRESS,
        help="registry model name, e.g. resnet50v2 (SURFsara's baseline); required for a "
        "weights-only file without run_config.json",
    )
    arch.add_argument(
        "--head",
        choices=HEADS,
        default=argparse.SUPPRESS,
        help="pooling before the dense head (default: flatten, SURFsara's); linear is torchvision's "
        "global average pooling and one dense layer",
    )
    arch.add_argument(
        "--channels",
        type=int,
        choices=[1, 3],
        default=argparse.SUPPRESS,
        help="image channels of the model input (default: 3)",
    )
