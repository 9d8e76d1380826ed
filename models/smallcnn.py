"""A small CNN for CPU smoke tests and the demo; not a model to report results with.

Five blocks of 3x3 convolution, batch normalisation, ReLU and 2x2 max-pooling
(16, 32, 64, 128, 128 filters): output stride 32 like the real backbones, so
the same head fits, but only ~0.25M backbone parameters: it builds in a
fraction of a second and runs quickly on a CPU at 32-64 px.
"""
from __future__ import annotations

from typing import Any

import keras

from models.registry import register_model

BLOCK_FILTERS: tuple[int, ...] = (16, 32, 64, 128, 128)


@register_model("smallcnn")
def smallcnn(x: Any) -> Any:
    """Five conv blocks (~0.25M backbone parameters): fast model for CPU smoke tests and the demo."""
    for i, filters in enumerate(BLOCK_FILTERS, start=1):
        x = keras.layers.Conv2D(filters, 3, padding="same", use_bias=False, name=f"block{i}_conv")(x)
        # momentum 0.9 (Keras's default is 0.99): the moving statistics used at
        # inference settle within the few hundred steps of a CPU smoke run.
        x = keras.layers.BatchNormalization(momentum=0.9, name=f"block{i}_bn")(x)
        x = keras.layers.Activation("relu", name=f"block{i}_relu")(x)
        x = keras.layers.MaxPooling2D(2, name=f"block{i}_pool")(x)
    return x
