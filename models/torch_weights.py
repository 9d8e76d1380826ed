"""torchvision state dicts into the registry's ``resnet18`` and ``densenet121``.

The PyTorch studies this project is compared with trained torchvision models:
``resnet18`` with ``model.fc = nn.Linear(512, 3)`` (the ResNet-18 radiography
study) and ``densenet121`` (fastai's ``cnn_learner`` body). Their layers line up
with the Keras models by name:

- ``resnet18`` (models/resnet18.py): the Keras layer names are torchvision's
  keys with ``.`` replaced by ``_`` (``layer2.0.downsample.0`` <->
  ``layer2_0_downsample_0``); ``fc`` <-> ``FC_<n>`` of ``head="linear"``.
- ``densenet121`` (keras.applications): ``features.conv0`` <-> ``conv1_conv``,
  ``features.norm0`` <-> ``conv1_bn``, ``features.denseblock{b}.denselayer{l}.
  norm1/conv1/norm2/conv2`` <-> ``conv{b+1}_block{l}_0_bn/_1_conv/_1_bn/_2_conv``,
  ``features.transition{t}.norm/conv`` <-> ``pool{t+1}_bn/_conv``,
  ``features.norm5`` <-> ``bn``; ``classifier`` <-> ``FC_<n>``.

Convolution kernels go from torch's ``[out, in, h, w]`` to Keras's ``[h, w, in,
out]``, linear weights are transposed, batch normalisation ``weight, bias,
running_mean, running_var`` become ``gamma, beta, moving_mean,
moving_variance``; ``num_batches_tracked`` has no Keras counterpart and is
dropped (said in a log line). Keras's DenseNet uses ``epsilon=1.001e-5`` where
torch uses ``1e-5``: the difference is folded into the moving variance
(``var + 1e-5 - 1.001e-5``), so the Keras layer divides by torch's
``sqrt(var + 1e-5)`` without a change of architecture.

Files: ``.pth``/``.pt`` are read with ``torch.load(map_location="cpu",
weights_only=True)`` (torch is optional, requirements-torch.txt); a plain state
dict, a ``{"state_dict": ...}`` or ``{"model": ...}`` wrapper and the
``module.`` prefix of ``nn.DataParallel`` are accepted. ``.safetensors`` files
are read with ``safetensors.numpy``, without torch. Every key is checked before
anything is assigned: a missing, unexpected or differently shaped tensor is one
``ValueError`` naming the first offending key, never a partial load.
"""
from __future__ import annotations

import dataclasses
import logging
import os
import pickle
import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import keras
import numpy as np

from common.fsutil import atomic_write_bytes
from models.layer_names import HEAD_DENSE_NAMES, output_layer_name
from models.weights import SAFETENSORS_SUFFIX, TORCH_SUFFIXES

log = logging.getLogger(__name__)

TORCH_BN_EPSILON = 1e-5
SUPPORTED_MODELS: tuple[str, ...] = ("densenet121", "resnet18")
CLASSIFIER_PREFIX: dict[str, str] = {"resnet18": "fc", "densenet121": "classifier"}
# The one convolution that sees the image: its 3 input channels may be summed for a grey model.
FIRST_CONV: dict[str, str] = {"resnet18": "conv1", "densenet121": "conv1_conv"}
STATE_DICT_WRAPPERS: tuple[str, ...] = ("state_dict", "model")
DATA_PARALLEL_PREFIX = "module."

_KERAS_TO_TORCH = {
    "kernel": "weight", "bias": "bias", "gamma": "weight", "beta": "bias",
    "moving_mean": "running_mean", "moving_variance": "running_var",
}
# torchvision's own renaming of its pre-0.4 DenseNet keys ("norm.1" -> "norm1"); the published
# ImageNet files still use the old names (torchvision.models.densenet._load_state_dict).
_OLD_DENSENET_KEY = re.compile(
    r"^(.*denselayer\d+\.(?:norm|relu|conv))\."
    r"((?:[12])\.(?:weight|bias|running_mean|running_var|num_batches_tracked))$"
)
_DENSE_LAYER = re.compile(r"^conv(\d)_block(\d+)_(0_bn|1_conv|1_bn|2_conv)$")
_DENSE_PART = {"0_bn": "norm1", "1_conv": "conv1", "1_bn": "norm2", "2_conv": "conv2"}
_TRANSITION = re.compile(r"^pool(\d)_(bn|conv)$")
_DENSENET_FIXED = {"conv1_conv": "features.conv0", "conv1_bn": "features.norm0", "bn": "features.norm5"}


def _resnet18_prefix(layer_name: str) -> str | None:
    return layer_name.replace("_", ".")


def _densenet121_prefix(layer_name: str) -> str | None:
    if layer_name in _DENSENET_FIXED:
        return _DENSENET_FIXED[layer_name]
    match = _DENSE_LAYER.match(layer_name)
    if match:
        block, layer, part = match.groups()
        return f"features.denseblock{int(block) - 1}.denselayer{layer}.{_DENSE_PART[part]}"
    match = _TRANSITION.match(layer_name)
    if match:
        stage, part = match.groups()
        return f"features.transition{int(stage) - 1}.{'norm' if part == 'bn' else 'conv'}"
    return None


_PREFIX: dict[str, Callable[[str], str | None]] = {
    "resnet18": _resnet18_prefix,
    "densenet121": _densenet121_prefix,
}


def torch_module_name(architecture: str, layer_name: str) -> str | None:
    """torchvision module (state-dict prefix) of a Keras backbone layer, or None if it has none."""
    return _PREFIX[architecture](layer_name)


def check_supported(model_name: str) -> str:
    """Canonical name of ``model_name`` if torchvision weights can be loaded into it, else ``ValueError``.

    Case-insensitive (neither supported model has an alias in the registry).
    """
    name = model_name.strip().lower() if isinstance(model_name, str) else model_name
    if name not in SUPPORTED_MODELS:
        raise ValueError(
            f"torchvision weights (.pth/.pt/.safetensors) can be loaded into "
            f"{' or '.join(SUPPORTED_MODELS)}; "
            f"received model {name!r}"
        )
    return name


# ------------------------------------------------------------------------------------ reading files


def _unwrap(obj: Any, path: Path, is_tensor: Callable[[Any], bool]) -> Mapping[str, Any]:
    """The state dict inside what torch.load returned: itself or a state_dict/model entry."""

    def is_state_dict(value: Any) -> bool:
        return (
            isinstance(value, Mapping) and len(value) > 0
            and all(isinstance(k, str) and is_tensor(v) for k, v in value.items())
        )

    if is_state_dict(obj):
        return obj
    if isinstance(obj, Mapping):
        for key in STATE_DICT_WRAPPERS:
            if key in obj and is_state_dict(obj[key]):
                log.info("weights file %s: using its %r entry as the state dict (other entries: %s)",
                         path, key, sorted(str(k) for k in obj if k != key)[:10] or "none")
                return obj[key]
        keys = sorted(str(k) for k in obj)
        shown = ", ".join(repr(k) for k in keys[:8]) + (f" and {len(keys) - 8} more" if len(keys) > 8 else "")
        received = f"a dict with keys {shown}" if keys else "an empty dict"
    else:
        received = f"a {type(obj).__name__}"
    raise ValueError(
        f"weights file {str(path)!r}: expected a state dict (parameter name -> tensor) or a dict with a "
        f"'state_dict' or 'model' entry holding one; received {received}"
    )


def _torch_load(path: Path) -> dict[str, np.ndarray]:
    try:
        import torch
    except ImportError:
        raise ValueError(
            f"weights file {str(path)!r}: reading a {path.suffix} file needs PyTorch, which is not "
            f"installed: pip install -r requirements-torch.txt, or convert it to .safetensors where torch is "
            f"installed (models.torch_weights.convert_to_safetensors) and pass that; "
            f"received suffix {path.suffix!r}"
        ) from None
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        raise ValueError(
            f"weights file {str(path)!r} holds Python objects besides tensors (e.g. a whole model saved with "
            f"torch.save(model)), which torch.load(weights_only=True) refuses because unpickling them can "
            f"run arbitrary code: save model.state_dict() instead; received such a pickle"
        ) from None
    except (RuntimeError, EOFError, OSError, ValueError) as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
        raise ValueError(
            f"weights file {str(path)!r} cannot be read by torch.load (truncated or not a torch file?); "
            f"received {type(exc).__name__}: {first}"
        ) from None
    state = _unwrap(obj, path, lambda v: isinstance(v, torch.Tensor))
    arrays = {}
    for key, tensor in state.items():
        tensor = tensor.detach().cpu()
        if tensor.is_floating_point() and tensor.dtype != torch.float64:
            tensor = tensor.float()  # float16/bfloat16 have no (or no exact) numpy counterpart
        arrays[key] = tensor.numpy()
    return arrays


def _safetensors_load(path: Path) -> dict[str, np.ndarray]:
    try:
        from safetensors.numpy import load_file
    except ImportError:
        raise ValueError(
            f"weights file {str(path)!r}: reading .safetensors needs the safetensors package "
            f"(requirements.txt); received suffix {path.suffix!r}"
        ) from None
    try:
        arrays = load_file(str(path))
    except Exception as exc:  # safetensors raises its own Rust-side error types
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
        raise ValueError(
            f"weights file {str(path)!r} cannot be read as safetensors (truncated or another format?); "
            f"received {type(exc).__name__}: {first}"
        ) from None
    return dict(_unwrap(arrays, path, lambda v: isinstance(v, np.ndarray)))


def read_state_dict(path: str | os.PathLike[str]) -> dict[str, np.ndarray]:
    """A torchvision state dict from ``path`` as ``{key: numpy array}``, float tensors as float32.

    ``.pth``/``.pt`` need torch; ``.safetensors`` does not. Wrappers are unwrapped, a
    ``module.`` prefix on every key is stripped and torchvision's old DenseNet key names
    (``norm.1``) are renamed as torchvision renames them (``norm1``).
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"weights file {str(path)!r} does not exist; received {str(path)!r}")
    suffix = path.suffix.lower()
    if suffix in TORCH_SUFFIXES:
        arrays = _torch_load(path)
    elif suffix == SAFETENSORS_SUFFIX:
        arrays = _safetensors_load(path)
    else:
        raise ValueError(
            f"weights file {str(path)!r}: torchvision weights must end in "
            f"{', '.join(TORCH_SUFFIXES + (SAFETENSORS_SUFFIX,))}; received suffix {path.suffix!r}"
        )
    arrays = {k: (v.astype(np.float32) if v.dtype.kind == "f" else v) for k, v in arrays.items()}
    if all(key.startswith(DATA_PARALLEL_PREFIX) for key in arrays):
        log.info("weights file %s: stripped the %r prefix of nn.DataParallel from every key", path,
                 DATA_PARALLEL_PREFIX)
        arrays = {key[len(DATA_PARALLEL_PREFIX):]: value for key, value in arrays.items()}
    renamed = {}
    for key, value in arrays.items():
        match = _OLD_DENSENET_KEY.match(key)
        renamed[match.group(1) + match.group(2) if match else key] = value
    if len(renamed) != len(arrays):
        raise ValueError(f"weights file {str(path)!r}: old and new DenseNet key names collide; received both")
    return renamed


def convert_to_safetensors(source: str | os.PathLike[str], target: str | os.PathLike[str]) -> Path:
    """Write the state dict of a ``.pth``/``.pt`` file (needs torch) to a ``.safetensors`` file.

    For machines without torch: convert once where torch is installed, then pass the
    ``.safetensors`` file to ``build_model(..., weights=...)`` or ``train_keras.py --weights``.
    The target is written atomically.
    """
    from safetensors.numpy import save

    target = Path(target)
    if target.suffix.lower() != SAFETENSORS_SUFFIX:
        raise ValueError(
            f"target {str(target)!r} must end in .safetensors; received suffix {target.suffix!r}"
        )
    arrays = {key: np.ascontiguousarray(value) for key, value in read_state_dict(source).items()}
    atomic_write_bytes(target, save(arrays))
    log.info("wrote %d tensors of %s to %s", len(arrays), source, target)
    return target


# --------------------------------------------------------------------------------- architecture guess


def guess_architecture(keys: Any) -> str | None:
    """Which torchvision ResNet/DenseNet a set of state-dict keys belongs to (None if unknown)."""
    keys = list(keys)
    dense = {}
    for key in keys:
        match = re.match(r"^features\.denseblock(\d)\.denselayer(\d+)\.", key)
        if match:
            block, layer = int(match.group(1)), int(match.group(2))
            dense[block] = max(dense.get(block, 0), layer)
    if dense:
        config = tuple(dense.get(b, 0) for b in (1, 2, 3, 4))
        names = {(6, 12, 24, 16): "densenet121", (6, 12, 32, 32): "densenet169",
                 (6, 12, 48, 32): "densenet201", (6, 12, 36, 24): "densenet161"}
        return names.get(config, "a DenseNet")
    blocks = {}
    for key in keys:
        match = re.match(r"^layer([1-4])\.(\d+)\.", key)
        if match:
            stage, block = int(match.group(1)), int(match.group(2))
            blocks[stage] = max(blocks.get(stage, -1), block + 1)
    if blocks:
        config = tuple(blocks.get(s, 0) for s in (1, 2, 3, 4))
        bottleneck = any(re.match(r"^layer1\.0\.conv3\.", key) for key in keys)
        names = {((2, 2, 2, 2), False): "resnet18", ((3, 4, 6, 3), False): "resnet34",
                 ((3, 4, 6, 3), True): "resnet50", ((3, 4, 23, 3), True): "resnet101",
                 ((3, 8, 36, 3), True): "resnet152"}
        return names.get((config, bottleneck), "a ResNet")
    return None


# ------------------------------------------------------------------------------------------ loading


@dataclasses.dataclass(frozen=True)
class TorchLoadReport:
    """What :func:`load_torchvision_weights` did."""

    path: str
    architecture: str
    loaded: tuple[str, ...]  # state-dict keys assigned, in model order
    skipped: dict[str, str]  # state-dict key -> why it was not used
    epsilon_adjusted: int  # BN layers whose moving variance absorbed the epsilon difference
    classifier_loaded: bool


@dataclasses.dataclass(frozen=True)
class _Target:
    key: str
    layer: keras.layers.Layer
    index: int  # position in layer.weights
    torch_shape: tuple[int, ...]  # what the file must hold, in torch's layout
    kind: str  # conv | dense | bn_var | plain


def _torch_shape(kind: str, shape: tuple[int, ...]) -> tuple[int, ...]:
    if kind == "conv":  # Keras [h, w, in, out] <- torch [out, in, h, w]
        return (shape[3], shape[2], shape[0], shape[1])
    if kind == "dense":  # Keras [in, out] <- torch [out, in]
        return (shape[1], shape[0])
    return shape


def _targets(layer: keras.layers.Layer, prefix: str) -> list[_Target]:
    targets = []
    for index, variable in enumerate(layer.weights):
        name = variable.name
        if name not in _KERAS_TO_TORCH:
            raise ValueError(f"layer {layer.name!r}: weights must be among {', '.join(_KERAS_TO_TORCH)} "
                             f"(those with a torch counterpart); received {name!r}")
        if isinstance(layer, keras.layers.Conv2D) and name == "kernel":
            kind = "conv"
        elif isinstance(layer, keras.layers.Dense) and name == "kernel":
            kind = "dense"
        elif isinstance(layer, keras.layers.BatchNormalization) and name == "moving_variance":
            kind = "bn_var"
        else:
            kind = "plain"
        targets.append(_Target(f"{prefix}.{_KERAS_TO_TORCH[name]}", layer, index,
                               _torch_shape(kind, tuple(variable.shape)), kind))
    return targets


def _to_keras(target: _Target, array: np.ndarray) -> np.ndarray:
    if target.kind == "conv":
        if array.shape[1] != target.torch_shape[1]:  # 3 -> 1 input channels, checked by the caller
            array = array.sum(axis=1, keepdims=True)
        return np.transpose(array, (2, 3, 1, 0))
    if target.kind == "dense":
        return array.T
    if target.kind == "bn_var":
        shift = TORCH_BN_EPSILON - float(target.layer.epsilon)
        if shift:
            return (array.astype(np.float64) + shift).astype(np.float32)
    return array


def _fmt(shape: tuple[int, ...]) -> str:
    return "(" + ", ".join(str(v) for v in shape) + ")"


@dataclasses.dataclass
class _Match:
    """How a state dict fits a model, worked out before anything is assigned."""

    targets: list[_Target]  # what will be assigned: the backbone, and the classifier when it fits
    skipped: dict[str, str] = dataclasses.field(default_factory=dict)  # state-dict key -> why not used
    problems: list[str] = dataclasses.field(default_factory=list)  # first one is raised
    missing: int = 0
    shape_errors: int = 0
    unexpected: int = 0
    # (level, message, args): logged once the file is known to fit.
    notes: list[tuple[int, str, tuple[Any, ...]]] = dataclasses.field(default_factory=list)
    classifier_loaded: bool = False

    def key_missing(self, key: str) -> None:
        self.missing += 1
        self.problems.append(f"key {key!r} is missing from the file")

    def wrong_shape(self, key: str, want: tuple[int, ...], have: tuple[int, ...]) -> None:
        self.shape_errors += 1
        self.problems.append(
            f"key {key!r} must have shape {_fmt(want)} (torch layout); received {_fmt(have)}"
        )


def _output_layer(model: keras.Model) -> keras.layers.Dense:
    out_layer = model.layers[-1]
    if not out_layer.name.startswith("FC_") or not isinstance(out_layer, keras.layers.Dense):
        raise ValueError(f"model {model.name!r} does not end in the registry's FC_<n> layer; received "
                         f"{out_layer.name!r}: build it with models.build_model")
    return out_layer


def _backbone_targets(model: keras.Model, architecture: str, head_names: set[str]) -> list[_Target]:
    targets: list[_Target] = []
    for layer in model.layers:
        if not layer.weights or layer.name in head_names:
            continue
        prefix = torch_module_name(architecture, layer.name)
        if prefix is None:
            raise ValueError(f"layer {layer.name!r} of model {model.name!r} has no torchvision counterpart; "
                             f"received a model that is not the registry's {architecture}")
        targets.extend(_targets(layer, prefix))
    return targets


def _match_backbone(match: _Match, state: Mapping[str, np.ndarray], architecture: str, path: Path) -> None:
    """Every backbone tensor must be in the file with its shape (or RGB for a grey first convolution)."""
    first_conv = FIRST_CONV[architecture]
    for target in match.targets:
        if target.key not in state:
            match.key_missing(target.key)
            continue
        shape = tuple(state[target.key].shape)
        grey = (target.kind == "conv" and target.layer.name == first_conv and target.torch_shape[1] == 1
                and shape == (target.torch_shape[0], 3, *target.torch_shape[2:]))
        if shape != target.torch_shape and not grey:
            match.wrong_shape(target.key, target.torch_shape, shape)
        elif grey:
            match.notes.append((logging.INFO, "%s: the 3 input channels of %s are summed for the 1-channel "
                                "model (exact for grey images that torch saw repeated to RGB)",
                                (path, target.key)))


def _match_classifier(
    match: _Match,
    state: Mapping[str, np.ndarray],
    *,
    clf_targets: list[_Target],
    clf: str,
    out_layer: keras.layers.Dense,
    model_name: str,
    path: Path,
) -> list[str]:
    """Load, skip (with a note) or refuse the file's classifier; returns its keys the model accounts for.

    ``clf_targets`` is empty for SURFsara's dense head, which never takes torchvision's classifier.
    """
    file_clf = [key for key in state if key.startswith(clf + ".")]
    if not clf_targets:
        for key in file_clf:
            match.skipped[key] = "the model has SURFsara's dense head, not torchvision's linear one"
        if file_clf:
            match.notes.append((logging.INFO, "%s: %s not loaded: model %r has SURFsara's head (dense, "
                                "dense_1, %s), which keeps its initialisation; head='linear' loads it",
                                (path, ", ".join(file_clf), model_name, out_layer.name)))
        return file_clf
    want = {t.key: t.torch_shape for t in clf_targets}
    have = {key: tuple(state[key].shape) for key in file_clf}
    features = want[f"{clf}.weight"][1]
    if have == want:
        match.targets.extend(clf_targets)
        match.classifier_loaded = True
    elif not have:
        match.notes.append((logging.WARNING, "%s has no %s.* tensors: %s keeps its random initialisation",
                            (path, clf, out_layer.name)))
    elif (set(have) == set(want) and have[f"{clf}.weight"][1] == features
          and have[f"{clf}.bias"] == (have[f"{clf}.weight"][0],)):
        classes = have[f"{clf}.weight"][0]
        for key in file_clf:
            match.skipped[key] = f"{classes} classes in the file, {out_layer.units} in the model"
        match.notes.append((logging.WARNING, "%s: %s.* has %d classes, the model %d: not loaded, %s keeps "
                            "its random initialisation (fine-tuning from e.g. ImageNet weights)",
                            (path, clf, classes, out_layer.units, out_layer.name)))
    else:
        for key in want:
            if key not in have:
                match.key_missing(key)
            elif have[key] != want[key]:
                match.wrong_shape(key, want[key], have[key])
        file_clf = [key for key in file_clf if key in want]  # the rest are reported as unexpected
    return file_clf


def _raise_if_it_does_not_fit(match: _Match, state: Mapping[str, np.ndarray], *, path: Path,
                              model_name: str, architecture: str) -> None:
    """One ``ValueError`` naming the first problem and counting the others, before any weight is set."""
    if not match.problems:
        return
    guess = guess_architecture(state)
    looks = f" (its keys look like torchvision's {guess})" if guess and guess != architecture else ""
    others = len(match.problems) - 1
    counts = (f"; {others} more problem{'s' if others != 1 else ''} ({match.missing} missing, "
              f"{match.shape_errors} with another shape, {match.unexpected} unexpected keys in all)"
              if others else "")
    raise ValueError(f"weights file {str(path)!r} does not fit model {model_name!r}{looks}: "
                     f"{match.problems[0]}{counts}")


def _assign(targets: list[_Target], state: Mapping[str, np.ndarray]) -> set[float]:
    """Set every target layer's weights at once; returns the Keras BN epsilons that differ from torch's."""
    by_layer: dict[str, list[_Target]] = {}
    for target in targets:
        by_layer.setdefault(target.layer.name, []).append(target)
    epsilons: list[float] = []
    for group in by_layer.values():
        layer = group[0].layer
        values = [variable.numpy() for variable in layer.weights]
        for target in group:
            values[target.index] = _to_keras(target, state[target.key])
        layer.set_weights(values)
        if isinstance(layer, keras.layers.BatchNormalization) and layer.epsilon != TORCH_BN_EPSILON:
            epsilons.append(float(layer.epsilon))
    return epsilons


def load_torchvision_weights(
    model: keras.Model,
    path: str | os.PathLike[str],
    *,
    architecture: str | None = None,
) -> TorchLoadReport:
    """Load a torchvision state dict (``.pth``/``.pt``/``.safetensors``) into a registry model.

    ``model`` is a ``resnet18`` or ``densenet121`` from :func:`models.build_model`
    (``architecture`` defaults to ``model.name``). Every backbone tensor must be in the
    file with the right shape. The classifier (``fc`` / ``classifier``) is loaded into
    ``FC_<n>`` when the model has ``head="linear"`` and the class counts agree; it is
    skipped with a log line when the model has SURFsara's dense head or the file has
    another class count (e.g. torchvision's 1000 ImageNet classes), so ``FC_<n>`` keeps
    its initialisation. ``num_batches_tracked`` counters are dropped. Anything else
    that does not fit is a ``ValueError`` naming the first offending key, raised before
    any weight is assigned.
    """
    path = Path(path).expanduser()
    architecture = check_supported(architecture if architecture is not None else model.name)
    out_layer = _output_layer(model)
    layer_names = {layer.name for layer in model.layers}
    surfsara_head = any(name in layer_names for name in HEAD_DENSE_NAMES)
    head_names = set(HEAD_DENSE_NAMES) | {output_layer_name(int(out_layer.units))}
    clf = CLASSIFIER_PREFIX[architecture]
    match = _Match(targets=_backbone_targets(model, architecture, head_names))
    clf_targets = [] if surfsara_head else _targets(out_layer, clf)

    state = read_state_dict(path)
    counters = [key for key in state if key.endswith(".num_batches_tracked")]
    for key in counters:
        match.skipped[key] = "num_batches_tracked: Keras batch normalisation keeps no step counter"
    _match_backbone(match, state, architecture, path)
    file_clf = _match_classifier(match, state, clf_targets=clf_targets, clf=clf, out_layer=out_layer,
                                 model_name=model.name, path=path)
    known = {t.key for t in match.targets} | {t.key for t in clf_targets} | set(match.skipped) | set(file_clf)
    unexpected = [key for key in state if key not in known]
    match.unexpected = len(unexpected)
    match.problems.extend(f"key {key!r} is not part of the registry's {architecture}" for key in unexpected)
    _raise_if_it_does_not_fit(match, state, path=path, model_name=model.name, architecture=architecture)

    epsilons = _assign(match.targets, state)
    for level, message, args in match.notes:
        log.log(level, message, *args)
    if counters:
        log.info("%s: %d num_batches_tracked counters ignored (Keras batch normalisation keeps none)", path,
                 len(counters))
    if epsilons:
        log.info("%s: %d BatchNormalization layers use epsilon %s where torch uses %g: the difference is "
                 "folded into their moving variance, so they compute torch's (x - mean) / sqrt(var + %g)",
                 path, len(epsilons), "/".join(f"{e:g}" for e in sorted(set(epsilons))), TORCH_BN_EPSILON,
                 TORCH_BN_EPSILON)
    log.info("loaded %d tensors of %s into model %r (%s: %s)", len(match.targets), path, model.name, clf,
             "loaded into " + out_layer.name if match.classifier_loaded else "not loaded")
    return TorchLoadReport(
        path=str(path),
        architecture=architecture,
        loaded=tuple(t.key for t in match.targets),
        skipped=match.skipped,
        epsilon_adjusted=len(epsilons),
        classifier_loaded=match.classifier_loaded,
    )
