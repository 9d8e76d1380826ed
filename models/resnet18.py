"""torchvision's ResNet-18 (He et al. 2016) in Keras: the backbone of the ResNet-18 radiography study.

The study fine-tuned ``torchvision.models.resnet18(pretrained=True)``. This is
the same network, layer for layer, without its ``avgpool`` and ``fc`` (the
registry adds the pooling and the head)::

    conv1 7x7/2, 64 -> bn1 -> relu -> maxpool 3x3/2
    layer1..layer4: two BasicBlocks each, 64/128/256/512 filters;
    the first block of layer2..layer4 has stride 2 and a 1x1/2 conv + BN shortcut

- **Padding as torchvision pads.** PyTorch pads its strided convolutions and the
  max-pool symmetrically (3 for the 7x7 stem, 1 for the 3x3 layers); Keras's
  ``padding="same"`` pads an even-sized input only at the bottom/right when
  the stride is 2, which shifts every sampled position by one pixel. So every
  strided layer gets an explicit ``ZeroPadding2D`` and ``padding="valid"``;
  stride-1 3x3 convolutions use ``"same"``, which is the same symmetric
  padding of 1. The max-pool follows a ReLU, so zero padding gives the same
  result as PyTorch's ``-inf`` padding.
- **Batch normalisation as torchvision's**: ``epsilon=1e-5`` and
  ``momentum=0.9`` (PyTorch's ``momentum=0.1`` is the weight of the new batch,
  Keras's the weight of the old average).
- **Initialisation as torchvision's**: convolutions He-normal with
  ``mode="fan_out"`` (torchvision's ``kaiming_normal_(mode="fan_out",
  nonlinearity="relu")``), BN scale 1 and offset 0; the study's ImageNet
  weights are not available to Keras, so ``imagenet=None`` and the model
  starts from these random weights unless ``weights`` names a file: a Keras
  backbone file or a torchvision state dict (``.pth``/``.pt``/``.safetensors``,
  converted by models/torch_weights.py; with ``head="linear"`` its ``fc`` too).
- **Input**: ``[0, 1]`` by default (the study's ``ToTensor()`` without
  ``Normalize``); ``input_norm="imagenet"`` adds torchvision's ImageNet
  ``Normalize(mean, std)`` as the ``input_norm`` layer (3 channels only).
- **Layer names are torchvision's state-dict keys** with ``.`` replaced by
  ``_`` (``conv1``, ``bn1``, ``layer2_0_conv1``, ``layer2_0_downsample_0``,
  ``layer2_0_downsample_1``...), so a converted torchvision checkpoint maps
  onto the layers by name (convolution kernels transposed from
  ``[out, in, h, w]`` to ``[h, w, in, out]``; BN ``weight, bias, running_mean,
  running_var`` are Keras's ``gamma, beta, moving_mean, moving_variance``).

Parameters: 11,176,512 trainable (torchvision's 11,689,512 minus its
``fc`` layer's 513,000) plus 9,600 non-trainable BN moving statistics, which
torchvision counts as buffers, not parameters (tests/test_models.py).
"""
from __future__ import annotations

from typing import Any

import keras

from models.registry import register_model

STAGE_FILTERS: tuple[int, ...] = (64, 128, 256, 512)
BLOCKS_PER_STAGE = 2
BN_EPSILON = 1e-5
BN_MOMENTUM = 0.9


def _conv_init() -> keras.initializers.Initializer:
    # torchvision: kaiming_normal_(mode="fan_out", nonlinearity="relu"), an untruncated normal.
    return keras.initializers.VarianceScaling(scale=2.0, mode="fan_out", distribution="untruncated_normal")


def _bn(x: Any, name: str) -> Any:
    return keras.layers.BatchNormalization(epsilon=BN_EPSILON, momentum=BN_MOMENTUM, name=name)(x)


def _conv(x: Any, filters: int, kernel: int, strides: int, name: str) -> Any:
    """A bias-free convolution padded as torchvision pads it (``kernel // 2`` on every side)."""
    pad = kernel // 2
    if strides == 1:
        padding = "same" if kernel > 1 else "valid"
    else:
        if pad:
            x = keras.layers.ZeroPadding2D(pad, name=f"{name}_pad")(x)
        padding = "valid"
    return keras.layers.Conv2D(filters, kernel, strides=strides, padding=padding, use_bias=False,
                               kernel_initializer=_conv_init(), name=name)(x)


def basic_block(x: Any, filters: int, name: str, *, strides: int = 1) -> Any:
    """torchvision's ``BasicBlock``: two 3x3 conv-BN, a shortcut, add, ReLU.

    The shortcut is the input, or a 1x1/2 conv-BN where the block changes the shape (torchvision's
    ``downsample``).
    """
    shortcut = x
    y = _conv(x, filters, 3, strides, f"{name}_conv1")
    y = _bn(y, f"{name}_bn1")
    y = keras.layers.Activation("relu", name=f"{name}_relu1")(y)
    y = _conv(y, filters, 3, 1, f"{name}_conv2")
    y = _bn(y, f"{name}_bn2")
    if strides != 1 or x.shape[-1] != filters:
        shortcut = _conv(x, filters, 1, strides, f"{name}_downsample_0")
        shortcut = _bn(shortcut, f"{name}_downsample_1")
    y = keras.layers.Add(name=f"{name}_add")([y, shortcut])
    return keras.layers.Activation("relu", name=f"{name}_relu2")(y)


# input_norm="imagenet": torchvision's Normalize(mean, std) as a layer, for studies that used it.
@register_model("resnet18", input_preprocessing="torch")
def resnet18(x: Any) -> Any:
    """torchvision's ResNet-18 (the radiography study's backbone); no ImageNet weights in Keras."""
    x = _conv(x, 64, 7, 2, "conv1")
    x = _bn(x, "bn1")
    x = keras.layers.Activation("relu", name="relu")(x)
    x = keras.layers.ZeroPadding2D(1, name="maxpool_pad")(x)
    x = keras.layers.MaxPooling2D(3, strides=2, name="maxpool")(x)
    for stage, filters in enumerate(STAGE_FILTERS, start=1):
        for block in range(BLOCKS_PER_STAGE):
            strides = 2 if stage > 1 and block == 0 else 1
            x = basic_block(x, filters, f"layer{stage}_{block}", strides=strides)
    return x
