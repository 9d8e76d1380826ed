"""COVID-Net-style backbone built from PEPX modules (Wang, Lin & Wong 2020, arXiv:2003.09871).

A PEPX module is projection-expansion-projection-extension::

    1x1 conv  first-stage projection  (C -> C/8)
    1x1 conv  expansion               (C/8 -> C/4)
    3x3 depthwise conv                (C/4, stride 2 in a stage's first module from stage 2 on)
    1x1 conv  second-stage projection (C/4 -> C/8)
    1x1 conv  extension               (C/8 -> C)

each followed by batch normalisation (and ReLU, except the extension). Four
stages of 3, 4, 6 and 3 modules with C = 256, 512, 1024, 2048 follow a 7x7
stride-2 stem and a stride-2 max-pool. Long-range connections: a stage's
input is projected by a 1x1 convolution to C channels, and every module of the
stage receives the sum of that projection and the outputs of all earlier
modules of the stage (densely connected by addition, as SURFsara's
``custom`` model did with ``Add``).

Differences from SURFsara's ``custom`` model (documented in docs/models.md):
only standard Keras layers (``padding="same"`` instead of ``tf.pad`` +
``padding="valid"``, no ``MaxPool2D(1, 1)`` identity layers); an expansion
convolution in every PEPX module as in the paper; stride-2 downsampling at the
start of stages 2-4 so the output stride is 32 like ResNet50V2 (SURFsara's
network kept a quarter of the input resolution to the end, which makes the
flatten head impossibly large). The paper's per-module widths come from a
machine-driven design search and were never published as code; the widths
here are a regular choice of ours.
"""
from __future__ import annotations

from typing import Any

import keras

from models.registry import register_model

STAGE_WIDTHS: tuple[int, ...] = (256, 512, 1024, 2048)
STAGE_MODULES: tuple[int, ...] = (3, 4, 6, 3)
BN_EPSILON = 1e-5


def _conv_bn(x: Any, filters: int, name: str, *, relu: bool = True, strides: int = 1) -> Any:
    x = keras.layers.Conv2D(filters, 1, strides=strides, use_bias=False, name=name)(x)
    x = keras.layers.BatchNormalization(epsilon=BN_EPSILON, name=f"{name}_bn")(x)
    if relu:
        x = keras.layers.Activation("relu", name=f"{name}_relu")(x)
    return x


def pepx_module(x: Any, channels: int, name: str, *, strides: int = 1) -> Any:
    """One PEPX module: 1x1 projection, 1x1 expansion, 3x3 depthwise, 1x1 projection, 1x1 extension."""
    x = _conv_bn(x, channels // 8, f"{name}_proj1")
    x = _conv_bn(x, channels // 4, f"{name}_expand")
    x = keras.layers.DepthwiseConv2D(3, strides=strides, padding="same", use_bias=False, name=f"{name}_dw")(x)
    x = keras.layers.BatchNormalization(epsilon=BN_EPSILON, name=f"{name}_dw_bn")(x)
    x = keras.layers.Activation("relu", name=f"{name}_dw_relu")(x)
    x = _conv_bn(x, channels // 8, f"{name}_proj2")
    return _conv_bn(x, channels, f"{name}_extend", relu=False)


@register_model("covidnet", aliases=("custom",))
def covidnet(x: Any) -> Any:
    """COVID-Net-style PEPX network (SURFsara's 'custom'); standard Keras layers only."""
    x = keras.layers.Conv2D(64, 7, strides=2, padding="same", use_bias=False, name="conv1_conv")(x)
    x = keras.layers.BatchNormalization(epsilon=BN_EPSILON, name="conv1_bn")(x)
    x = keras.layers.Activation("relu", name="conv1_relu")(x)
    x = keras.layers.MaxPooling2D(3, strides=2, padding="same", name="pool1_pool")(x)
    for stage, (channels, modules) in enumerate(zip(STAGE_WIDTHS, STAGE_MODULES), start=1):
        strides = 1 if stage == 1 else 2
        # Long-range connection: the stage input, projected, reaches every module of the stage.
        total = keras.layers.Conv2D(
            channels, 1, strides=strides, use_bias=False, name=f"stage{stage}_proj"
        )(x)
        for i in range(1, modules + 1):
            name = f"pepx{stage}_{i}"
            y = pepx_module(x, channels, name, strides=strides if i == 1 else 1)
            total = keras.layers.Add(name=f"{name}_add")([total, y])
            x = keras.layers.BatchNormalization(epsilon=BN_EPSILON, name=f"{name}_out_bn")(total)
            x = keras.layers.Activation("relu", name=f"{name}_out_relu")(x)
    return x
