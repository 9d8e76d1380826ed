"""keras.applications backbones (``include_top=False``), one short function each.

The backbone is built on the model's own input tensor, so its layers sit
directly in the final model with the names keras.applications gives them (as in
SURFsara's model.py, whose checkpoints therefore map layer for layer). Weights
are never requested from Keras here: the shared builder loads a local file into
the backbone afterwards (see :mod:`models.weights`).
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

import keras
import numpy as np

from models.registry import IMAGENET_STD_RGB, register_model
from models.weights import EFFICIENTNET_URL, KERAS_APPLICATIONS_URL, ImageNetWeights


def _file(name: str) -> Callable[[tuple[int, int, int]], str]:
    return lambda _input_shape: name


def _mobilenetv2_file(input_shape: tuple[int, int, int]) -> str:
    # Keras picks the file by input size and falls back to the 224 px one
    # (notop convolution weights do not depend on the size).
    rows, cols = input_shape[0], input_shape[1]
    size = rows if rows == cols and rows in (96, 128, 160, 192, 224) else 224
    return f"mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_{size}_no_top.h5"


def _backbone(application: Callable[..., keras.Model], x: Any) -> Any:
    """Feature map of ``application`` built on tensor ``x`` with random weights."""
    model = application(include_top=False, weights=None, input_tensor=x, input_shape=tuple(x.shape[1:]))
    return model.output


@register_model(
    "resnet50v2",
    imagenet=ImageNetWeights(
        _file("resnet50v2_weights_tf_dim_ordering_tf_kernels_notop.h5"),
        KERAS_APPLICATIONS_URL + "resnet/",
        "tf",
    ),
    # SURFsara fed [0, 1] images to ResNet50V2 without its [-1, 1] preprocess_input.
    default_input_norm="none",
)
def resnet50v2(x: Any) -> Any:
    """ResNet50V2 (pre-activation ResNet-50): SURFsara's baseline backbone."""
    return _backbone(keras.applications.ResNet50V2, x)


@register_model(
    "densenet121",
    imagenet=ImageNetWeights(
        _file("densenet121_weights_tf_dim_ordering_tf_kernels_notop.h5"),
        KERAS_APPLICATIONS_URL + "densenet/",
        "torch",
    ),
)
def densenet121(x: Any) -> Any:
    """DenseNet-121 (CheXNet's backbone); ImageNet input = per-channel mean/std."""
    return _backbone(keras.applications.DenseNet121, x)


@register_model(
    "xception",
    min_size=71,
    imagenet=ImageNetWeights(
        _file("xception_weights_tf_dim_ordering_tf_kernels_notop.h5"),
        KERAS_APPLICATIONS_URL + "xception/",
        "tf",
    ),
)
def xception(x: Any) -> Any:
    """Xception (depthwise-separable Inception); needs inputs of at least 71x71."""
    return _backbone(keras.applications.Xception, x)


@register_model(
    "mobilenetv2",
    imagenet=ImageNetWeights(_mobilenetv2_file, KERAS_APPLICATIONS_URL + "mobilenet_v2/", "tf"),
)
def mobilenetv2(x: Any) -> Any:
    """MobileNetV2 (alpha 1.0), SURFsara's 'mobilenetv2' option."""
    return _backbone(keras.applications.MobileNetV2, x)


def _efficientnet_imagenet_variance(backbone: keras.Model) -> None:
    """Make EfficientNet's internal Normalization divide by the ImageNet std, not its square root.

    The keras.applications EfficientNet files store the ImageNet *standard
    deviations* as the Normalization layer's variance (tensorflow#49930). With
    ``weights="imagenet"`` Keras compensates with an extra Rescaling layer that
    it only adds in that case, which would make the architecture depend on the
    weights argument. Instead the loaded variance is squared here, which gives
    the same ``(x - mean) / std`` and is saved with the model's weights. Files
    whose variance is anything else (e.g. weights saved from this project,
    already squared) are left as they are.
    """
    for layer in backbone.layers:
        internal = isinstance(layer, keras.layers.Normalization) and layer.name != "input_norm"
        if not internal or not layer.weights:
            continue
        mean, variance, *rest = layer.get_weights()
        if np.allclose(variance.reshape(-1), IMAGENET_STD_RGB, rtol=0, atol=1e-6):
            layer.set_weights([mean, np.square(variance), *rest])
            layer.finalize_state()


@register_model(
    "efficientnetb4",
    aliases=("EfficientNet",),
    imagenet=ImageNetWeights(_file("efficientnetb4_notop.h5"), EFFICIENTNET_URL, "x255"),
    post_load=_efficientnet_imagenet_variance,
)
def efficientnetb4(x: Any) -> Any:
    """EfficientNet-B4 (keras.applications; it rescales and normalises [0, 255] input itself)."""
    return _backbone(keras.applications.EfficientNetB4, x)
