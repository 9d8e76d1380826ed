"""The model registry: one name per architecture, one shared builder.

Every model is a backbone (a function registered with :func:`register_model`
that maps an image tensor to a feature map) under SURFsara's classification
head. :func:`build_model` assembles, always in the same order and with the
same fixed layer names::

    input_1 (float32 images in [0, 1], 1 or 3 channels)
      -> channel_repeat   Concatenate, only for a 1-channel input to a keras.applications backbone
      -> input_norm       Rescaling/Normalization, only for input_norm="imagenet"
      -> backbone         layer names as keras.applications gives them
      -> flatten | global_average_pooling2d | global_max_pooling2d
      -> dense (1024, relu, L2) -> dense_1 (256, relu, L2) -> FC_<num_classes> (softmax, float32)

or, with ``head="linear"`` (torchvision's ``avgpool`` + ``fc``/``classifier``)::

      -> global_average_pooling2d -> FC_<num_classes> (softmax, float32)

The architecture depends only on :class:`ModelSpec`, never on ``weights``: a
model trained from ImageNet weights is rebuilt for evaluation with
``weights=None`` and the checkpoint loads into it unchanged. Only standard
Keras layers are used, so saved models load with ``keras.models.load_model``
in safe mode and without ``custom_objects``.
"""
from __future__ import annotations

import contextlib
import dataclasses
import difflib
import math
import numbers
import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import keras

from models.layer_names import (
    HEAD_DENSE_NAMES,
    INPUT_LAYER_NAME,
    POOL_LAYER_NAMES,
    output_layer_name,
)
from models.weights import ImageNetWeights, is_torch_weights_file, resolve_weights

HEADS: tuple[str, ...] = ("flatten", "avg", "max", "linear")
INPUT_NORMS: tuple[str, ...] = ("none", "imagenet")
DTYPE_POLICIES: tuple[str, ...] = ("float32", "mixed_float16", "mixed_bfloat16")

HEAD_UNITS: tuple[int, ...] = (1024, 256)

# ImageNet statistics on the [0, 1] scale (keras.applications.imagenet_utils, "torch" mode).
IMAGENET_MEAN_RGB: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD_RGB: tuple[float, float, float] = (0.229, 0.224, 0.225)

Builder = Callable[[Any], Any]  # KerasTensor -> KerasTensor (the feature map)


@dataclasses.dataclass(frozen=True)
class ModelInfo:
    """What the registry knows about one architecture."""

    name: str
    builder: Builder
    aliases: tuple[str, ...]
    min_size: int
    imagenet: ImageNetWeights | None
    default_input_norm: str
    input_norms: tuple[str, ...]
    post_load: Callable[[keras.Model], None] | None = None
    input_preprocessing: str | None = None

    @property
    def preprocessing(self) -> str | None:
        """The ImageNet input scaling ``input_norm="imagenet"`` applies (None: the model has none)."""
        return self.imagenet.preprocessing if self.imagenet is not None else self.input_preprocessing

    @property
    def description(self) -> str:
        """First line of the builder's docstring."""
        doc = (self.builder.__doc__ or "").strip()
        return doc.splitlines()[0] if doc else ""

    @property
    def rgb_backbone(self) -> bool:
        """keras.applications backbones always see 3 channels (ImageNet weights need them)."""
        return self.imagenet is not None


_REGISTRY: dict[str, ModelInfo] = {}
_LOOKUP: dict[str, str] = {}  # lower-case name or alias -> canonical name


def _input_norms(
    name: str,
    *,
    imagenet: ImageNetWeights | None,
    input_preprocessing: str | None,
    default_input_norm: str | None,
) -> tuple[tuple[str, ...], str]:
    """The ``input_norm`` values a model allows, and its default, from its ImageNet preprocessing."""
    if imagenet is not None and input_preprocessing is not None:
        raise ValueError(f"register_model({name!r}): input_preprocessing is for models without imagenet "
                         f"weights (whose preprocessing it would contradict); received both")
    preprocessing = imagenet.preprocessing if imagenet is not None else input_preprocessing
    if preprocessing is None:
        input_norms: tuple[str, ...] = ("none",)
    elif preprocessing == "x255":
        input_norms = ("imagenet",)
    else:
        input_norms = INPUT_NORMS
    if default_input_norm is None:
        default_input_norm = "imagenet" if imagenet is not None else "none"
    if default_input_norm not in input_norms:
        raise ValueError(
            f"register_model({name!r}): default_input_norm must be one of {input_norms}; "
            f"received {default_input_norm!r}"
        )
    return input_norms, default_input_norm


def register_model(
    name: str,
    *,
    aliases: Sequence[str] = (),
    min_size: int = 32,
    imagenet: ImageNetWeights | None = None,
    default_input_norm: str | None = None,
    post_load: Callable[[keras.Model], None] | None = None,
    input_preprocessing: str | None = None,
) -> Callable[[Builder], Builder]:
    """Decorator that registers a backbone builder under ``name`` (and ``aliases``).

    The builder takes the (channel-repeated, normalised) image tensor and returns
    the backbone's feature map. ``min_size`` is the smallest input height/width it
    accepts; ``imagenet`` describes its keras.applications ImageNet weights (None
    for models without); ``default_input_norm`` defaults to ``"imagenet"`` when
    there are ImageNet weights, else ``"none"``; ``post_load`` runs on the
    backbone after a weights file was loaded into it; ``input_preprocessing`` gives a
    model without keras.applications weights an ImageNet input scaling (``"torch"``: the
    per-channel mean/std torchvision models are trained with), so that
    ``input_norm="imagenet"`` is allowed for it.
    """
    input_norms, default_input_norm = _input_norms(
        name,
        imagenet=imagenet,
        input_preprocessing=input_preprocessing,
        default_input_norm=default_input_norm,
    )

    def decorator(builder: Builder) -> Builder:
        keys = [name, *aliases]
        taken = [key for key in keys if key.lower() in _LOOKUP]
        if taken:
            raise ValueError(f"register_model({name!r}): name or alias already registered: {taken}; "
                             f"received name {name!r} with aliases {list(aliases)}")
        _REGISTRY[name] = ModelInfo(
            name=name,
            builder=builder,
            aliases=tuple(aliases),
            min_size=min_size,
            imagenet=imagenet,
            default_input_norm=default_input_norm,
            input_norms=input_norms,
            post_load=post_load,
            input_preprocessing=input_preprocessing,
        )
        for key in keys:
            _LOOKUP[key.lower()] = name
        return builder

    return decorator


def list_models() -> list[str]:
    """Canonical names of all registered models, sorted."""
    return sorted(_REGISTRY)


def resolve_model_name(name: str) -> str:
    """Canonical model name for ``name`` or one of its aliases (case-insensitive).

    Raises ``ValueError`` listing the valid names, with a close match if any.
    """
    if isinstance(name, str) and name.strip().lower() in _LOOKUP:
        return _LOOKUP[name.strip().lower()]
    aliases = ", ".join(f"{alias} -> {info.name}" for info in _REGISTRY.values() for alias in info.aliases)
    message = (
        f"unknown model {name!r}: the model name must be one of {', '.join(list_models())} "
        f"(aliases: {aliases}); received {name!r}"
    )
    if isinstance(name, str):
        close = difflib.get_close_matches(name.strip().lower(), list(_LOOKUP), n=1, cutoff=0.6)
        if close:
            message += f"; did you mean {_LOOKUP[close[0]]!r}?"
    raise ValueError(message)


def get_model_info(name: str) -> ModelInfo:
    """Registry entry for ``name`` (aliases accepted)."""
    return _REGISTRY[resolve_model_name(name)]


def _check_l2(argument: str, value: Any) -> float:
    is_number = isinstance(value, numbers.Real) and not isinstance(value, bool)
    if not is_number or not math.isfinite(value) or value < 0:
        raise ValueError(f"{argument} must be a finite number >= 0; received {value!r}")
    return float(value)


def _check_num_classes(n: Any) -> int:
    if isinstance(n, bool) or not isinstance(n, numbers.Integral) or n < 2:
        raise ValueError(f"num_classes must be an integer >= 2; received {n!r}")
    return int(n)


def _check_head(head: Any) -> str:
    lowered = head.lower() if isinstance(head, str) else head
    if lowered not in HEADS:
        raise ValueError(f"head must be one of {', '.join(HEADS)}; received {head!r}")
    return lowered


def _check_input_shape(shape: Any, info: ModelInfo) -> tuple[int, int, int]:
    """``(height, width, channels)`` as ints: 1 or 3 channels, at least the model's ``min_size``."""
    if (
        isinstance(shape, (str, bytes))
        or not isinstance(shape, Sequence)
        or len(shape) != 3
        or any(isinstance(v, bool) or not isinstance(v, numbers.Integral) or v < 1 for v in shape)
    ):
        raise ValueError(
            f"input_shape must be (height, width, channels) with positive integers; received {shape!r}"
        )
    shape = tuple(int(v) for v in shape)
    if shape[2] not in (1, 3):
        raise ValueError(f"input_shape: channels must be 1 or 3; received {shape!r}")
    if min(shape[:2]) < info.min_size:
        raise ValueError(
            f"input_shape: model {info.name!r} needs height and width >= {info.min_size}; "
            f"received {shape!r}"
        )
    return shape


def _check_input_norm(norm: Any, info: ModelInfo, shape: tuple[int, int, int]) -> str:
    """The model's default for ``None``; otherwise one of the model's ``input_norms``, lower-cased."""
    given = norm
    if norm is None:
        norm = info.default_input_norm
    norm = norm.lower() if isinstance(norm, str) else norm
    if norm not in info.input_norms:
        why = ""
        if info.imagenet is not None and info.imagenet.preprocessing == "x255":
            why = (
                " (keras.applications EfficientNet rescales by 1/255 and normalises inside the "
                "network, so its [0, 1] input is always multiplied by 255 first)"
            )
        elif info.preprocessing is None:
            why = " (it has no ImageNet weights, so there is no ImageNet preprocessing to apply)"
        raise ValueError(
            f"input_norm for model {info.name!r} must be None (default: "
            f"{info.default_input_norm!r}) or one of {', '.join(info.input_norms)}{why}; "
            f"received {given!r}"
        )
    if norm == "imagenet" and shape[2] == 1 and not info.rgb_backbone:
        raise ValueError(
            f"input_norm='imagenet' for model {info.name!r} needs 3 channels (the ImageNet mean and std "
            f"are per RGB channel, and this model takes 1 channel directly); "
            f"received input_shape {shape!r}"
        )
    return norm


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    """Everything that defines a model's architecture (weights aside).

    The constructor validates and normalises: ``name`` becomes the canonical
    name, ``input_shape`` a tuple of ints and ``input_norm=None`` the model's
    default, so a spec written with :meth:`to_dict` rebuilds the same network
    even if defaults change later.
    """

    name: str
    num_classes: int = 3
    input_shape: tuple[int, int, int] = (512, 512, 3)
    head: str = "flatten"
    head_l2: float = 1e-4
    backbone_l2: float = 0.0
    input_norm: str | None = None

    def __post_init__(self) -> None:
        info = get_model_info(self.name)
        num_classes = _check_num_classes(self.num_classes)
        shape = _check_input_shape(self.input_shape, info)
        normalised = {
            "name": info.name,
            "num_classes": num_classes,
            "input_shape": shape,
            "head": _check_head(self.head),
            "head_l2": _check_l2("head_l2", self.head_l2),
            "backbone_l2": _check_l2("backbone_l2", self.backbone_l2),
            "input_norm": _check_input_norm(self.input_norm, info, shape),
        }
        for field, value in normalised.items():
            object.__setattr__(self, field, value)  # frozen dataclass: normalise once, here

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dictionary (``input_shape`` as a list)."""
        data = dataclasses.asdict(self)
        data["input_shape"] = list(self.input_shape)
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ModelSpec:
        """Inverse of :meth:`to_dict`; missing fields take their defaults, unknown ones are an error."""
        if not isinstance(data, Mapping):
            raise ValueError(f"model spec must be a mapping; received {type(data).__name__}")
        known = {field.name for field in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"model spec: unknown keys {unknown}; allowed keys are {sorted(known)}; "
                             f"received {sorted(data)}")
        if "name" not in data:
            raise ValueError(f"model spec: the key 'name' is required; received keys {sorted(data)}")
        values = dict(data)
        if "input_shape" in values and isinstance(values["input_shape"], list):
            values["input_shape"] = tuple(values["input_shape"])
        return cls(**values)


@contextlib.contextmanager
def _dtype_policy_scope(policy: str | None) -> Iterator[None]:
    """Build under ``policy`` and restore the previous global policy afterwards."""
    if policy is None:
        yield
        return
    # Keras 3 has no policy scope; the global is restored in `finally`.
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy(policy)
    try:
        yield
    finally:
        keras.config.set_dtype_policy(previous)


def _input_norm_layer(preprocessing: str) -> keras.layers.Layer:
    """The backbone's ImageNet preprocessing of a [0, 1] image, as one standard layer."""
    if preprocessing == "tf":  # keras "tf" mode: x / 127.5 - 1 on [0, 255] == 2x - 1 on [0, 1]
        return keras.layers.Rescaling(2.0, offset=-1.0, name="input_norm")
    if preprocessing == "torch":  # keras "torch" mode: per-channel ImageNet mean and std
        return keras.layers.Normalization(
            axis=-1,
            mean=list(IMAGENET_MEAN_RGB),
            variance=[s * s for s in IMAGENET_STD_RGB],
            name="input_norm",
        )
    if preprocessing == "x255":  # EfficientNet's own Rescaling(1/255) + Normalization follow
        return keras.layers.Rescaling(255.0, name="input_norm")
    raise ValueError(f"ImageNet preprocessing must be tf, torch or x255; received {preprocessing!r}")


def _linear_head(features: Any, spec: ModelSpec) -> Any:
    """torchvision's head: average pool -> one Dense, initialised as torch's ``nn.Linear``.

    ``nn.Linear(in, n)`` draws weight and bias from U(-1/sqrt(in), 1/sqrt(in))
    (kaiming_uniform with a=sqrt(5)), which is what ``model.fc = nn.Linear(512, 3)``
    gives the studies. The softmax is part of the layer, as for the other heads:
    every tool of the project reads probabilities.
    """
    x = keras.layers.GlobalAveragePooling2D(name=POOL_LAYER_NAMES["linear"])(features)
    bound = 1.0 / math.sqrt(int(x.shape[-1]))
    return keras.layers.Dense(
        spec.num_classes,
        activation="softmax",
        dtype="float32",
        # U(-sqrt(3 * scale / fan_in), +...) with scale 1/3 = U(-1/sqrt(in), 1/sqrt(in)).
        kernel_initializer=keras.initializers.VarianceScaling(1 / 3, mode="fan_in", distribution="uniform"),
        bias_initializer=keras.initializers.RandomUniform(-bound, bound),
        name=output_layer_name(spec.num_classes),
    )(x)


def _add_head(features: Any, spec: ModelSpec) -> Any:
    """SURFsara's head: pool/flatten -> Dense 1024 -> Dense 256 -> softmax (float32); or the linear one."""
    if spec.head == "linear":
        return _linear_head(features, spec)
    pool_name = POOL_LAYER_NAMES[spec.head]
    if spec.head == "flatten":
        x = keras.layers.Flatten(name=pool_name)(features)
    elif spec.head == "avg":
        x = keras.layers.GlobalAveragePooling2D(name=pool_name)(features)
    else:
        x = keras.layers.GlobalMaxPooling2D(name=pool_name)(features)
    for units, name in zip(HEAD_UNITS, HEAD_DENSE_NAMES):
        regularizer = keras.regularizers.L2(spec.head_l2) if spec.head_l2 > 0 else None
        x = keras.layers.Dense(units, activation="relu", kernel_regularizer=regularizer, name=name)(x)
    # float32 so the softmax (and the loss) stay float32 under mixed precision.
    return keras.layers.Dense(
        spec.num_classes, activation="softmax", dtype="float32", name=output_layer_name(spec.num_classes)
    )(x)


def head_layer_names(num_classes: int = 3, head: str = "flatten") -> tuple[str, ...]:
    """Names of the head's Dense layers, last one the softmax output (only ``FC_<n>`` for ``"linear"``)."""
    if head == "linear":
        return (output_layer_name(num_classes),)
    return (*HEAD_DENSE_NAMES, output_layer_name(num_classes))


def kernel_attributes(layer: keras.layers.Layer) -> tuple[tuple[str, str], ...]:
    """``(regularizer attribute, kernel attribute)`` pairs of a layer's kernels, empty if it has none."""
    if isinstance(layer, keras.layers.SeparableConv2D):
        return (("depthwise_regularizer", "depthwise_kernel"), ("pointwise_regularizer", "pointwise_kernel"))
    if isinstance(layer, keras.layers.DepthwiseConv2D):
        return (("depthwise_regularizer", "kernel"),)
    if isinstance(layer, (keras.layers.Conv2D, keras.layers.Dense)):
        return (("kernel_regularizer", "kernel"),)
    return ()


def backbone_kernel_layers(model: keras.Model, num_classes: int = 3) -> list[keras.layers.Layer]:
    """The layers with kernels that are not part of the head (the backbone's)."""
    head = set(head_layer_names(num_classes))
    return [layer for layer in model.layers if layer.name not in head and kernel_attributes(layer)]


def _regularize_backbone(model: keras.Model, l2: float, num_classes: int) -> None:
    """Add an L2 penalty to every backbone kernel of a built model.

    Setting ``layer.kernel_regularizer`` after build does nothing in Keras 3:
    the penalty lives on the variable (``variable.regularizer``), which
    ``model.losses`` reads. Both are set: the variable's for this model, the
    layer attribute so ``get_config`` saves it and a reloaded model has it too.
    """
    regularizer = keras.regularizers.L2(l2)
    head = set(head_layer_names(num_classes))
    for layer in model.layers:
        if layer.name in head:
            continue
        pairs = kernel_attributes(layer)
        if not pairs:
            if any("kernel" in v.path.rsplit("/", 1)[-1] for v in layer.trainable_weights):
                raise TypeError(
                    f"backbone_l2: layer {layer.name!r} has a kernel, and kernels can be regularised in "
                    f"Conv2D, DepthwiseConv2D, SeparableConv2D and Dense layers; received a "
                    f"{type(layer).__name__}"
                )
            continue
        for reg_attr, kernel_attr in pairs:
            setattr(layer, reg_attr, regularizer)
            getattr(layer, kernel_attr).regularizer = regularizer


def _load_backbone_weights(info: ModelInfo, inputs: Any, features: Any, path: Path) -> None:
    backbone = keras.Model(inputs, features, name=f"{info.name}_backbone")
    try:
        backbone.load_weights(str(path))
    except (ValueError, OSError) as exc:
        raise ValueError(
            f"weights file {str(path)!r} does not fit the {info.name!r} backbone "
            f"(expected its include_top=False weights in Keras HDF5 layout); received {exc}"
        ) from exc
    if info.post_load is not None:
        info.post_load(backbone)


def build_model_from_spec(
    spec: ModelSpec,
    *,
    weights: str | os.PathLike[str] | None = None,
    dtype_policy: str | None = None,
) -> keras.Model:
    """Build the model ``spec`` describes.

    ``weights``: ``None``/``"none"`` = random init; ``"imagenet"`` = the
    keras.applications notop file, which must already be in the Keras cache
    folder (never downloaded; ``FileNotFoundError`` says where to put it); a
    ``.h5``/``.hdf5`` path = backbone weights from that local file; a ``.pth``/``.pt``/
    ``.safetensors`` path = a torchvision state dict for ``resnet18``/``densenet121``
    (:func:`models.torch_weights.load_torchvision_weights`: the backbone, and
    ``fc``/``classifier`` too with ``head="linear"``). ``dtype_policy``: ``None`` =
    the current global policy, else one of :data:`DTYPE_POLICIES`, used for this
    build only.
    """
    if not isinstance(spec, ModelSpec):
        raise ValueError(f"spec must be a ModelSpec; received {type(spec).__name__}")
    if dtype_policy is not None and dtype_policy not in DTYPE_POLICIES:
        raise ValueError(
            f"dtype_policy must be None or one of {', '.join(DTYPE_POLICIES)}; received {dtype_policy!r}"
        )
    info = _REGISTRY[spec.name]
    weights_path = resolve_weights(spec.name, weights, info.imagenet, spec.input_shape)
    torch_file = weights_path is not None and is_torch_weights_file(weights_path)
    if torch_file:
        from models.torch_weights import check_supported

        check_supported(spec.name)  # before the (slow) build

    with _dtype_policy_scope(dtype_policy):
        inputs = keras.Input(shape=spec.input_shape, dtype="float32", name=INPUT_LAYER_NAME)
        x = inputs
        if info.rgb_backbone and spec.input_shape[-1] == 1:
            x = keras.layers.Concatenate(axis=-1, name="channel_repeat")([x, x, x])
        if spec.input_norm == "imagenet" and info.preprocessing is not None:  # ModelSpec allows no other case
            x = _input_norm_layer(info.preprocessing)(x)
        features = info.builder(x)
        if weights_path is not None and not torch_file:
            _load_backbone_weights(info, inputs, features, weights_path)
        outputs = _add_head(features, spec)
        model = keras.Model(inputs, outputs, name=spec.name)
        if torch_file:
            # After the head exists: a linear head takes torchvision's fc/classifier too.
            from models.torch_weights import load_torchvision_weights

            load_torchvision_weights(model, weights_path, architecture=spec.name)
        if spec.backbone_l2 > 0:
            _regularize_backbone(model, spec.backbone_l2, spec.num_classes)
    return model


def build_model(
    name: str,
    *,
    num_classes: int = 3,
    input_shape: Sequence[int] = (512, 512, 3),
    weights: str | os.PathLike[str] | None = None,
    head: str = "flatten",
    head_l2: float = 1e-4,
    backbone_l2: float = 0.0,
    input_norm: str | None = None,
    dtype_policy: str | None = None,
) -> keras.Model:
    """Build registered model ``name`` (aliases and any case accepted) with SURFsara's head.

    Inputs are float32 images in ``[0, 1]`` with 1 or 3 channels. See
    :class:`ModelSpec` for the architecture arguments and
    :func:`build_model_from_spec` for ``weights`` and ``dtype_policy``.
    """
    spec = ModelSpec(
        name=name,
        num_classes=num_classes,
        input_shape=input_shape,
        head=head,
        head_l2=head_l2,
        backbone_l2=backbone_l2,
        input_norm=input_norm,
    )
    return build_model_from_spec(spec, weights=weights, dtype_policy=dtype_policy)
