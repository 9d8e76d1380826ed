"""The fixed layer names of every registry model.

Code, tests and SURFsara-era weight files look layers up by these names, so
they never change. A module of its own so that the torchvision converter
(``models/torch_weights.py``) can name the head without importing the registry
that calls it.
"""
from __future__ import annotations

INPUT_LAYER_NAME = "input_1"
POOL_LAYER_NAMES: dict[str, str] = {
    "flatten": "flatten",
    # Keras 2's default names for these layers.
    "avg": "global_average_pooling2d",
    "max": "global_max_pooling2d",
    # torchvision's adaptive average pool before its single linear layer.
    "linear": "global_average_pooling2d",
}
HEAD_DENSE_NAMES: tuple[str, ...] = ("dense", "dense_1")


def output_layer_name(num_classes: int) -> str:
    """Name of the softmax layer (SURFsara's ``FC_3`` for three classes)."""
    return f"FC_{num_classes}"
