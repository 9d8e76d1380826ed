"""Load any model this project evaluates into one prediction interface.

:func:`load_predictor` takes a path and returns a :class:`Predictor` whose
``predict_batch(images)`` maps float32 images ``[n, size, size, channels]`` in
[0, 1] (what ``data.pipeline`` produces) to class probabilities ``[n, 3]``, in
the order of :data:`data.labels.CLASSES`. The kind of model is decided from the
path and its content:

===================  ===========================================================
kind                 what the path is
===================  ===========================================================
``keras-h5``         a full-model HDF5 file (``.hdf5``/``.h5`` with a model config)
``keras-weights``    a weights-only HDF5 file: SURFsara's ``cp-EE-LOSS.hdf5``
                     (Keras 2 layout) or a Keras 3 ``.weights.h5``; the
                     architecture comes from ``run_config.json`` beside it, or
                     from ``model``/``img_size``/``head``/``channels``
``keras``            a Keras 3 ``.keras`` archive
``savedmodel``       a TensorFlow SavedModel folder (``serving_default`` signature)
``onnx``             an ONNX model, run with onnxruntime on the CPU
===================  ===========================================================

Keras files load in safe mode with ``compile=False``: a model that stores
Python code (a ``Lambda`` layer) or needs classes that are not part of Keras is
refused with the reason, never run. An ONNX input may be
channels-last ``[N, H, W, C]`` or channels-first ``[N, C, H, W]`` (PyTorch's
layout; recognised by a channel dimension of 1 or 3 and transposed), with a
dynamic or a fixed batch size (``torch.onnx.export`` without ``dynamic_axes``
fixes it to 1; batches are then fed in chunks of that size).

Outputs may be probabilities or logits, for every kind: when any row of the
first batch is not a probability vector (values in [0, 1] summing to 1 within
:data:`PROBABILITY_TOLERANCE`), the model is taken to output logits and a
softmax is applied to every batch from then on.

Every failure to load (not a model, a truncated file, weights of another
architecture or with no architecture to put them in, an ONNX model whose
external data file is missing, an unsupported input) is a ``ValueError`` (or
``FileNotFoundError``) whose one line names the file and the reason.

Every predictor also says how its images are to be resized
(:attr:`Predictor.preprocessing`): the ``resize`` argument if given, else
what the checkpoint records (``run_config.json`` beside it, an ONNX model's
``covidx.resize``), else ``"baseline"`` (:mod:`evaluation.preprocessing`).
"""
from __future__ import annotations

import dataclasses
import logging
import os
import re
import zipfile
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from data.labels import CLASSES, NUM_CLASSES
from evaluation.onnx_metadata import CLASS_ORDER as ONNX_CLASS_ORDER
from evaluation.onnx_metadata import LAYOUT as ONNX_LAYOUT
from evaluation.onnx_metadata import NORMALIZATION as ONNX_NORMALIZATION
from evaluation.onnx_metadata import OUTPUT as ONNX_OUTPUT
from evaluation.onnx_metadata import PIXEL_RANGE as ONNX_PIXEL_RANGE
from evaluation.onnx_metadata import RESIZE as ONNX_RESIZE
from evaluation.onnx_metadata import OnnxConventions, conventions_from, read_onnx_metadata
from evaluation.preprocessing import (
    DEFAULT_RESIZE,
    Preprocessing,
    Recorded,
    RunRecord,
    check_resize,
    choose_preprocessing,
    run_record,
)

log = logging.getLogger(__name__)

KINDS: tuple[str, ...] = ("keras-h5", "keras-weights", "keras", "savedmodel", "onnx")
KIND_NAMES: dict[str, str] = {
    "keras-h5": "Keras full-model HDF5 file",
    "keras-weights": "Keras weights-only HDF5 file",
    "keras": "Keras .keras archive",
    "savedmodel": "TensorFlow SavedModel",
    "onnx": "ONNX model",
}
# SURFsara's train_keras.py defaults, used for a weights-only file without run_config.json.
DEFAULT_WEIGHTS_IMG_SIZE = 512
DEFAULT_HEAD = "flatten"
DEFAULT_CHANNELS = 3
PROBABILITY_TOLERANCE = 1e-3
SERVING_SIGNATURE = "serving_default"

_HDF5_SUFFIXES = (".h5", ".hdf5")
_HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"
_ONNX_FLOAT_TYPES = {"tensor(float)": np.float32, "tensor(double)": np.float64, "tensor(float16)": np.float16}


def with_article(noun: str) -> str:
    """``"a Keras ..."`` / ``"an ONNX ..."``: the article for the kind names above."""
    return f"{'an' if noun[:1] in 'AEIOU' else 'a'} {noun}"


def _first_line(exc: BaseException, text: str, limit: int = 300) -> str:
    """``"ExceptionType: first non-empty line of text"``, cut to ``limit`` characters."""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    short = f"{type(exc).__name__}: {lines[0]}" if lines else type(exc).__name__
    return short if len(short) <= limit else short[: limit - 3] + "..."


def _reason(exc: BaseException) -> str:
    """First line of an exception message, with its type, kept short (for one-line errors)."""
    return _first_line(exc, str(exc))


def _ort_reason(exc: BaseException) -> str:
    """onnxruntime's message without its error-code prefix, file path and C++ source location."""
    text = str(exc).strip()
    text = re.sub(r"^\[ONNXRuntimeError\] : \d+ : \w+ : ", "", text)
    location = re.search(r"\.(?:cc|cpp|h):\d+ ", text)
    if location:
        # What follows the location is "namespace::Function(arguments) message".
        rest = text[location.end():]
        depth, end = 0, -1
        for i, char in enumerate(rest):
            if char == "(":
                depth += 1
            elif char == ")":
                depth -= 1
                if depth == 0:
                    end = i
                    break
        if end >= 0 and rest[end + 1:].strip():
            text = rest[end + 1:].strip()
    return _first_line(exc, text)


def softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise softmax in float64 (numerically stable)."""
    z = np.asarray(logits, dtype=np.float64)
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def looks_like_probabilities(values: np.ndarray, *, tolerance: float = PROBABILITY_TOLERANCE) -> bool:
    """True when every row is in [0, 1] and sums to 1 within ``tolerance``."""
    v = np.asarray(values, dtype=np.float64)
    if not np.isfinite(v).all():
        return False
    in_range = (v >= -tolerance).all() and (v <= 1.0 + tolerance).all()
    return bool(in_range and np.all(np.abs(v.sum(axis=1) - 1.0) <= tolerance))


@dataclasses.dataclass(eq=False)
class Predictor:
    """A loaded model behind one interface.

    Attributes:
        path: the file or folder it was loaded from.
        kind: one of :data:`KINDS`.
        img_size: the square input size images are resized to.
        channels: 1 or 3.
        description: one line for reports (kind, architecture, input).
        keras_model: the ``keras.Model`` for Keras kinds (Grad-CAM and t-SNE need it), else None.
        run: the raw forward pass ``[n, size, size, channels] float32 -> [n, 3]``.
        output: ``"probabilities"`` or ``"logits"`` once the first batch was seen, else ``"unknown"``.
        preprocessing: how images are resized for this model, and why (:mod:`evaluation.preprocessing`).
    """

    path: Path
    kind: str
    img_size: int
    channels: int
    description: str
    run: Callable[[np.ndarray], np.ndarray]
    keras_model: Any = None
    output: str = "unknown"
    preprocessing: Preprocessing = dataclasses.field(default_factory=Preprocessing)

    def to_probabilities(self, raw: np.ndarray) -> np.ndarray:
        """Check a raw ``[n, 3]`` output and turn logits into probabilities (float64)."""
        out = np.asarray(raw)
        if out.ndim != 2 or out.shape[1] != NUM_CLASSES:
            raise ValueError(
                f"checkpoint {self.path}: the model output has shape {out.shape}; expected "
                f"[n, {NUM_CLASSES}] (normal, pneumonia, COVID-19)"
            )
        if not np.isfinite(out).all():
            raise ValueError(f"checkpoint {self.path}: the model output contains NaN or infinite values")
        is_prob = looks_like_probabilities(out)
        if self.output == "unknown":
            self.output = "probabilities" if is_prob else "logits"
            if not is_prob:
                log.info("%s: outputs are not probabilities; applying softmax", self.path)
        if self.output == "logits":
            return softmax(out)
        if not is_prob:
            raise ValueError(
                f"checkpoint {self.path}: the model output probabilities for the first batch but values "
                f"that are not probabilities for a later one (rows must be in [0, 1] and sum to 1)"
            )
        # Rounding may put a float16/float32 softmax a hair outside [0, 1].
        return np.clip(out.astype(np.float64), 0.0, 1.0)

    def predict_batch(self, images: np.ndarray) -> np.ndarray:
        """Probabilities ``[n, 3]`` (float64) for float32 images ``[n, size, size, channels]`` in [0, 1]."""
        images = np.asarray(images, dtype=np.float32)
        expected = (self.img_size, self.img_size, self.channels)
        if images.ndim != 4 or images.shape[1:] != expected:
            raise ValueError(
                f"checkpoint {self.path}: images must have shape [n, {', '.join(map(str, expected))}], "
                f"received {list(images.shape)}"
            )
        try:
            raw = self.run(images)
        except Exception as exc:  # runtimes raise their own types, with long messages; report one line
            raise ValueError(f"checkpoint {self.path}: inference failed ({_reason(exc)})") from exc
        return self.to_probabilities(raw)


# ---------------------------------------------------------------------------
# Kind detection


def detect_kind(path: str | os.PathLike[str]) -> str:
    """Which of :data:`KINDS` ``path`` is, from its name and content.

    Raises ``FileNotFoundError`` for a missing path and ``ValueError`` naming the
    path for anything that is not one of the kinds.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    if path.is_dir():
        if (path / "saved_model.pb").is_file():
            return "savedmodel"
        raise ValueError(
            f"checkpoint {path} is a folder without saved_model.pb, so not a SavedModel; give a model file "
            f"(.hdf5, .h5, .keras, .onnx) or a SavedModel folder"
        )
    name = path.name.lower()
    if name == "saved_model.pb":
        return "savedmodel"
    if name.endswith(".onnx"):
        return "onnx"
    if name.endswith(".keras"):
        return "keras"
    if name.endswith(_HDF5_SUFFIXES):
        from training.checkpoints import describe_hdf5

        try:
            content = describe_hdf5(path)
        except ValueError as exc:
            raise ValueError(_hdf5_problem(path, exc)) from None
        return "keras-h5" if content == "model" else "keras-weights"
    raise ValueError(
        f"checkpoint {path}: unknown kind of model file; expected a .hdf5/.h5 Keras file, a .keras archive, "
        f"an .onnx model or a SavedModel folder"
    )


def _hdf5_problem(path: Path, exc: ValueError) -> str:
    """Why an ``.hdf5``/``.h5`` checkpoint cannot be opened, in words a user can act on."""
    text = str(exc)
    try:
        with open(path, "rb") as fh:
            head = fh.read(16)
    except OSError:
        head = b""
    prefix = f"checkpoint {path} is not a readable HDF5 file"
    if not head:
        return f"{prefix}: it is empty (0 bytes)"
    if not head.startswith(_HDF5_SIGNATURE):
        return (f"{prefix}: it does not start with the HDF5 signature (its first bytes are {head!r}), "
                f"so it is another kind of file under an HDF5 name")
    truncated = re.search(r"truncated file: eof = (\d+).*?stored_eof = (\d+)", text)
    if truncated:
        return (f"{prefix}: it is truncated, {int(truncated[1]):,} of its {int(truncated[2]):,} bytes are "
                f"there (an interrupted copy or download; copy it again)")
    return f"checkpoint {text}"  # describe_hdf5's message starts with the path


# ---------------------------------------------------------------------------
# Keras


def _square_size(
    path: Path, shape: Sequence[Any], img_size: int | None, *, layout: str = "NHWC"
) -> tuple[int, int]:
    """``(img_size, channels)`` from a model input shape, checked against a requested ``img_size``."""
    if len(shape) != 4:
        raise ValueError(
            f"checkpoint {path}: the model input has shape {list(shape)}; expected a batch of images"
        )
    if layout == "NHWC":
        height, width, channels = shape[1], shape[2], shape[3]
    else:
        channels, height, width = shape[1], shape[2], shape[3]
    if channels not in (1, 3):
        raise ValueError(
            f"checkpoint {path}: the model input has {channels} channels (shape {list(shape)}); 1 or 3 "
            "expected"
        )
    fixed = [d for d in (height, width) if isinstance(d, int)]
    if len(fixed) == 2 and height != width:
        raise ValueError(
            f"checkpoint {path}: the model input is {height}x{width}; only square inputs are supported "
            f"(images are resized to size x size as in training)"
        )
    if fixed:
        if img_size is not None and img_size != fixed[0]:
            raise ValueError(
                f"--img_size {img_size} does not match the input size {fixed[0]} of checkpoint {path}"
            )
        return int(fixed[0]), int(channels)
    if img_size is None:
        raise ValueError(
            f"checkpoint {path}: the model accepts any image size; give --img_size (the training size)"
        )
    return int(img_size), int(channels)


def _keras_predictor(path: Path, kind: str, model: Any, img_size: int | None, detail: str) -> Predictor:
    if len(model.inputs) != 1 or len(model.outputs) != 1:
        raise ValueError(
            f"checkpoint {path}: the model has {len(model.inputs)} inputs and {len(model.outputs)} outputs; "
            f"one image input and one [n, {NUM_CLASSES}] output are expected"
        )
    output_shape = tuple(model.output_shape)
    if len(output_shape) != 2 or output_shape[-1] != NUM_CLASSES:
        raise ValueError(
            f"checkpoint {path}: the model output has shape {list(output_shape)}; expected [n, "
            f"{NUM_CLASSES}] "
            f"(normal, pneumonia, COVID-19)"
        )
    size, channels = _square_size(path, tuple(model.input_shape), img_size)
    description = f"{KIND_NAMES[kind]}, {detail or model.name}, input {size}x{size}x{channels}"
    return Predictor(
        path=path,
        kind=kind,
        img_size=size,
        channels=channels,
        description=description,
        run=model.predict_on_batch,
        keras_model=model,
    )


def _exception_chain_text(exc: BaseException) -> str:
    texts, seen = [], set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        texts.append(str(exc))
        exc = exc.__cause__ or exc.__context__
    return "\n".join(texts)


def _keras_load_problem(path: Path, kind: str, exc: BaseException) -> str:
    """One line on why Keras refused ``path``; safe-mode refusals say so and why."""
    text = _exception_chain_text(exc)
    if "safe_mode" in text or "arbitrary code execution" in text:
        what = "a Lambda layer" if "Lambda" in text else "Python code (a serialized function)"
        return (
            f"checkpoint {path} holds {what}: Python code stored in the model file, which would run on "
            f"this machine when the model is loaded; it is not loaded, for safety (Keras safe mode). Save "
            f"the model without Lambda layers, or save its weights (model.save_weights) and evaluate those "
            f"with --model if it is a registry architecture"
        )
    unknown = re.search(r"Could not locate (?:class|function) '([^']+)'", text)
    if unknown:
        return (
            f"checkpoint {path} cannot be loaded as {with_article(KIND_NAMES[kind])}: it uses "
            f"{unknown[1]!r}, which is neither part of Keras nor of this project's models (code from a model "
            f"file is never imported); save its weights and evaluate those with --model if it is a registry "
            f"architecture"
        )
    return f"checkpoint {path} cannot be loaded as a {KIND_NAMES[kind]} ({_reason(exc)})"


def _load_keras_file(path: Path, kind: str, img_size: int | None) -> Predictor:
    import keras

    if kind == "keras" and not zipfile.is_zipfile(path):
        raise ValueError(f"checkpoint {path} is not a .keras archive (not a zip file, or a truncated one)")
    try:
        # safe_mode=True is Keras's default; spelled out because a model file must never run code here.
        model = keras.models.load_model(str(path), compile=False, safe_mode=True)
    except Exception as exc:  # Keras raises many types on foreign or damaged files
        raise ValueError(_keras_load_problem(path, kind, exc)) from exc
    if not isinstance(model, keras.Model):
        raise ValueError(f"checkpoint {path} holds a {type(model).__name__}, not a Keras model")
    return _keras_predictor(path, kind, model, img_size, detail="")


def _spec_for_weights(
    path: Path,
    *,
    record: RunRecord | None,
    model: str | None,
    img_size: int | None,
    head: str | None,
    channels: int | None,
) -> tuple[Any, str]:
    """The ModelSpec a weights-only file is loaded into (``record``: the run configuration beside it),
    and where it came from."""
    from models import ModelSpec, resolve_model_name
    from training.config import RUN_CONFIG_NAME

    if record is not None:
        config_path = record.path
        try:
            spec = ModelSpec.from_dict(record.config.model)
        except (ValueError, TypeError, KeyError, AttributeError) as exc:
            raise ValueError(
                f"run configuration {config_path} (for checkpoint {path}) is unusable: {_reason(exc)}"
            ) from exc
        given = {
            "--model": (model, spec.name, resolve_model_name),
            "--img_size": (img_size, spec.input_shape[0], lambda v: v),
            "--head": (head, spec.head, lambda v: v.lower() if isinstance(v, str) else v),
            "--channels": (channels, spec.input_shape[2], lambda v: v),
        }
        for flag, (value, recorded, norm) in given.items():
            if value is None:
                continue
            try:
                value_norm = norm(value)
            except ValueError as exc:
                raise ValueError(f"{flag} {value} (for checkpoint {path}): {exc}") from None
            if value_norm != recorded:
                raise ValueError(
                    f"{flag} {value} disagrees with {config_path}, which says {recorded} for checkpoint "
                    f"{path}; "
                    f"leave {flag} out to use the run configuration"
                )
        return spec, f"architecture from {config_path}"
    if model is None:
        raise ValueError(
            f"checkpoint {path} holds weights only, and there is no {RUN_CONFIG_NAME} beside it to say which "
            f"architecture they belong to; give --model (and --img_size, --head as in training; SURFsara's "
            f"baseline is --model resnet50v2 --img_size 512 --head flatten)"
        )
    size = img_size if img_size is not None else DEFAULT_WEIGHTS_IMG_SIZE
    nch = channels if channels is not None else DEFAULT_CHANNELS
    try:
        spec = ModelSpec(name=model, input_shape=(size, size, nch), head=head or DEFAULT_HEAD)
    except ValueError as exc:
        raise ValueError(f"--model/--img_size/--head/--channels for checkpoint {path}: {exc}") from None
    return spec, "architecture from --model/--img_size/--head/--channels"


def _load_keras_weights(
    path: Path,
    *,
    record: RunRecord | None,
    model: str | None,
    img_size: int | None,
    head: str | None,
    channels: int | None,
) -> Predictor:
    from models import build_model_from_spec
    from training.checkpoints import load_weights_file

    spec, source = _spec_for_weights(
        path, record=record, model=model, img_size=img_size, head=head, channels=channels
    )
    keras_model = build_model_from_spec(spec, weights=None)
    try:
        load_weights_file(keras_model, path)  # ValueError naming the file when the weights do not fit
    except ValueError as exc:
        size, _, nch = spec.input_shape
        raise ValueError(
            f"{exc} (tried {spec.name} at {size}x{size}x{nch} with the {spec.head} head, {source}; the "
            f"weights belong to another architecture, size or head)"
        ) from None
    detail = f"{spec.name} ({spec.head} head; {source})"
    return _keras_predictor(path, "keras-weights", keras_model, spec.input_shape[0], detail)


# ---------------------------------------------------------------------------
# SavedModel


def _load_saved_model(path: Path, img_size: int | None) -> Predictor:
    import tensorflow as tf

    folder = path.parent if path.name == "saved_model.pb" else path
    try:
        loaded = tf.saved_model.load(str(folder))
    except Exception as exc:  # TensorFlow raises OpError, ValueError, protobuf errors...
        if "0 MetaGraphs" in str(exc):
            raise ValueError(
                f"checkpoint {folder} cannot be loaded as a SavedModel: its saved_model.pb "
                f"holds no graph (an empty or damaged file)"
            ) from exc
        raise ValueError(f"checkpoint {folder} cannot be loaded as a SavedModel ({_reason(exc)})") from exc
    signatures = getattr(loaded, "signatures", {})
    if SERVING_SIGNATURE not in signatures:
        raise ValueError(
            f"checkpoint {folder}: the SavedModel has no {SERVING_SIGNATURE!r} signature "
            f"(it has: {', '.join(signatures) or 'none'})"
        )
    fn = signatures[SERVING_SIGNATURE]
    inputs = fn.structured_input_signature[1]
    if len(inputs) != 1:
        raise ValueError(
            f"checkpoint {folder}: {SERVING_SIGNATURE} takes {len(inputs)} inputs ({', '.join(inputs)}); "
            f"one image batch is expected"
        )
    ((input_name, spec),) = inputs.items()
    if not spec.dtype.is_floating:
        raise ValueError(
            f"checkpoint {folder}: {SERVING_SIGNATURE} takes {spec.dtype.name} input {input_name!r}; "
            f"float images in [0, 1] are expected"
        )
    shape = tuple(spec.shape.as_list()) if spec.shape.rank is not None else ()
    size, channels = _square_size(folder, shape, img_size)
    outputs = list(fn.structured_outputs)
    output_name = "probabilities" if "probabilities" in outputs else outputs[0]
    if len(outputs) > 1 and output_name != "probabilities":
        log.info("%s: %s has outputs %s; using %r", folder, SERVING_SIGNATURE, outputs, output_name)
    dtype = spec.dtype

    def run(images: np.ndarray) -> np.ndarray:
        return fn(**{input_name: tf.constant(images, dtype=dtype)})[output_name].numpy()

    description = (
        f"{KIND_NAMES['savedmodel']}, signature {SERVING_SIGNATURE}({input_name}) -> {output_name}, "
        f"input {size}x{size}x{channels}"
    )
    return Predictor(
        path=folder, kind="savedmodel", img_size=size, channels=channels, description=description, run=run
    )


# ---------------------------------------------------------------------------
# ONNX


def onnx_layout(shape: Sequence[Any]) -> str:
    """``"NHWC"`` or ``"NCHW"`` for an ONNX image input shape (dimensions are ints or names).

    The channel dimension is the one that is 1 or 3; when both positions could be
    it, a square spatial pair decides; otherwise ``ValueError``.
    """
    if len(shape) != 4:
        raise ValueError(f"expected a 4-D image input, received shape {list(shape)}")
    last = shape[3] in (1, 3)
    first = shape[1] in (1, 3)
    if last and not first:
        return "NHWC"
    if first and not last:
        return "NCHW"
    if first and last:
        if shape[1] == shape[2] and shape[2] != shape[3]:
            return "NHWC"
        if shape[2] == shape[3] and shape[1] != shape[2]:
            return "NCHW"
    raise ValueError(
        f"cannot tell the channel dimension of input shape {list(shape)}: expected [N, H, W, C] or "
        f"[N, C, H, W] with C = 1 or 3"
    )


def _onnx_tensors(graph: Any) -> Iterator[Any]:
    """Every tensor of an ONNX graph: initializers and constant attributes, also in sub-graphs."""
    yield from graph.initializer
    for node in graph.node:
        for attribute in node.attribute:
            if attribute.HasField("t"):
                yield attribute.t
            yield from attribute.tensors
            if attribute.HasField("g"):
                yield from _onnx_tensors(attribute.g)
            for sub in attribute.graphs:
                yield from _onnx_tensors(sub)


def _onnx_external_data_problem(path: Path) -> str | None:
    """Why the external data files an ONNX model refers to are unusable (missing, too short), or None.

    torch.onnx.export writes models over 2 GB, and onnx.save(save_as_external_data=True) any model, as
    ``model.onnx`` plus a data file beside it; copying only the .onnx is an easy mistake.
    """
    try:
        import onnx
        from onnx.external_data_helper import ExternalDataInfo, uses_external_data

        proto = onnx.load(str(path), load_external_data=False)
    except Exception:  # noqa: BLE001 - any parse failure: onnxruntime then reports why
        return None
    missing: dict[str, Path] = {}
    short: dict[str, Path] = {}
    for tensor in _onnx_tensors(proto.graph):
        if not uses_external_data(tensor):
            continue
        try:
            info = ExternalDataInfo(tensor)
        except ValueError:  # a malformed entry: onnxruntime reports it
            continue
        data = path.parent / info.location
        if not data.is_file():
            missing[info.location] = data
        elif info.length and data.stat().st_size < (info.offset or 0) + info.length:
            short[info.location] = data
    if missing:
        names = ", ".join(missing)
        looked = ", ".join(map(str, missing.values()))
        return (
            f"checkpoint {path}: the ONNX model keeps its weights in the external data file {names}, "
            f"which is missing (looked for {looked}); copy it beside the .onnx file"
        )
    if short:
        return (
            f"checkpoint {path}: the external data file {', '.join(map(str, short.values()))} is shorter "
            f"than the model says (truncated; copy it again)"
        )
    return None


def _onnx_conventions(path: Path, given: Mapping[str, str] | None) -> OnnxConventions:
    """The model's ``covidx.*`` metadata, then the caller's values for the keys it lacks."""
    try:
        stored = read_onnx_metadata(path)
    except Exception:  # noqa: BLE001 - an unreadable model: onnxruntime then says why
        stored = {}
    conventions = conventions_from(stored, what=f"checkpoint {path}: ONNX metadata")
    if given:
        conventions = conventions.merged(conventions_from(given, what="--onnx"))
    return conventions


def _warn_guesses(path: Path, conventions: OnnxConventions, layout: str) -> None:
    missing = conventions.missing()
    if not missing:
        return
    guesses = {
        ONNX_CLASS_ORDER: f"class order {','.join(CLASSES)}",
        ONNX_LAYOUT: f"layout {layout} (from the input shape)",
        ONNX_PIXEL_RANGE: "pixels in 0-1",
        ONNX_NORMALIZATION: "no normalisation outside the model",
        ONNX_OUTPUT: "logits or probabilities decided from the first batch",
        ONNX_RESIZE: f"resize {DEFAULT_RESIZE} (cv2-style bilinear, no antialiasing)",
    }
    log.warning(
        "%s: the ONNX model does not say %s; assumed %s (docs/evaluation.md: ONNX metadata)",
        path,
        ", ".join(missing),
        "; ".join(guesses[key] for key in missing),
    )


def _onnx_preprocess(conventions: OnnxConventions) -> Callable[[np.ndarray], np.ndarray]:
    """0-1 NHWC float32 images -> what the model takes (before the layout transpose)."""
    if conventions.mean is not None:
        mean = np.asarray(conventions.mean, np.float32)
        std = np.asarray(conventions.std, np.float32)
        return lambda images: (images - mean) / std
    if conventions.pixel_range == "0-255":
        return lambda images: images * np.float32(255.0)
    return lambda images: images


@dataclasses.dataclass(frozen=True, eq=False)
class _OnnxRun:
    """An ONNX session as ``Predictor.run``: 0-1 NHWC float32 images in, raw outputs in CLASSES order out."""

    session: Any
    input_name: str
    output_name: str
    dtype: type
    layout: str
    batch: int | None  # a fixed batch size, or None
    preprocess: Callable[[np.ndarray], np.ndarray]
    columns: list[int] | None  # output column of each of CLASSES, when the model's order differs

    def __call__(self, images: np.ndarray) -> np.ndarray:
        if self.batch is None or len(images) == self.batch:
            return self._forward(images)
        # A fixed batch size: feed chunks of exactly that size, padding the last one.
        outs = []
        for start in range(0, len(images), self.batch):
            chunk = images[start : start + self.batch]
            n = len(chunk)
            if n < self.batch:
                chunk = np.concatenate([chunk, np.zeros((self.batch - n, *chunk.shape[1:]), chunk.dtype)])
            outs.append(self._forward(chunk)[:n])
        return np.concatenate(outs) if outs else np.zeros((0, NUM_CLASSES))

    def _forward(self, images: np.ndarray) -> np.ndarray:
        x = self.preprocess(images).astype(self.dtype, copy=False)
        if self.layout == "NCHW":
            x = np.ascontiguousarray(x.transpose(0, 3, 1, 2))
        out = np.asarray(self.session.run([self.output_name], {self.input_name: x})[0])
        return out[:, self.columns] if self.columns is not None and out.ndim == 2 else out


def _onnx_session(path: Path) -> Any:
    """An onnxruntime CPU session of ``path``; ``ValueError`` with onnxruntime's reason when it fails."""
    try:
        import onnxruntime as ort
    except ImportError as exc:  # pragma: no cover - onnxruntime is in requirements.txt
        raise ValueError(f"checkpoint {path}: evaluating ONNX models needs onnxruntime ({exc})") from None
    options = ort.SessionOptions()
    options.log_severity_level = 3  # errors only; warnings about unused initializers are noise here
    try:
        return ort.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises InvalidProtobuf, Fail, InvalidGraph, ...
        raise ValueError(f"checkpoint {path} cannot be loaded as an ONNX model ({_ort_reason(exc)})") from exc


def _onnx_image_input(path: Path, session: Any) -> Any:
    """The session's one input, checked to take float images."""
    inputs = session.get_inputs()
    if len(inputs) != 1:
        raise ValueError(
            f"checkpoint {path}: the ONNX model has {len(inputs)} inputs "
            f"({', '.join(i.name for i in inputs)}); one image batch is expected"
        )
    inp = inputs[0]
    if inp.type not in _ONNX_FLOAT_TYPES:
        raise ValueError(
            f"checkpoint {path}: ONNX input {inp.name!r} is {inp.type}; float images in [0, 1] are expected"
        )
    return inp


def _onnx_description(inp: Any, run: _OnnxRun, conventions: OnnxConventions, size: int, channels: int) -> str:
    batch_text = f"fixed batch {run.batch}" if run.batch else "any batch size"
    said = [
        f"classes {','.join(conventions.class_order)}" if conventions.class_order else "",
        f"pixels {conventions.pixel_range}" if conventions.pixel_range else "",
        f"normalisation {conventions.normalization}" if conventions.normalization else "",
    ]
    return (
        f"{KIND_NAMES['onnx']} (onnxruntime CPU), input {inp.name!r} {run.layout} {size}x{size}x{channels} "
        f"{inp.type}, {batch_text}, output {run.output_name!r}"
        + "".join(f", {text}" for text in said if text)
    )


def _onnx_preprocessing(
    path: Path, conventions: OnnxConventions, resize: str | None
) -> tuple[Preprocessing, OnnxConventions]:
    """The resize of an ONNX model (``resize`` over ``covidx.resize``), and the conventions with it filled
    in when it was not guessed (so the "does not say" warning names the key only when it was)."""
    said = conventions.resize
    recorded = None if said is None else Recorded(said, f"ONNX metadata {ONNX_RESIZE}")
    preprocessing = choose_preprocessing(resize, recorded, checkpoint=path)
    if resize is None and recorded is None:
        assumed = dataclasses.replace(preprocessing, source=f"assumed: the model has no {ONNX_RESIZE}")
        return assumed, conventions
    return preprocessing, dataclasses.replace(conventions, resize=preprocessing.resize)


def _load_onnx(
    path: Path, img_size: int | None, given: Mapping[str, str] | None = None, resize: str | None = None
) -> Predictor:
    problem = _onnx_external_data_problem(path)
    if problem:
        raise ValueError(problem)
    preprocessing, conventions = _onnx_preprocessing(path, _onnx_conventions(path, given), resize)
    session = _onnx_session(path)
    inp = _onnx_image_input(path, session)
    shape = list(inp.shape)
    try:
        layout = conventions.layout or onnx_layout(shape)
    except ValueError as exc:
        raise ValueError(f"checkpoint {path}: ONNX input {inp.name!r}: {exc}") from None
    size, channels = _square_size(path, shape, img_size, layout=layout)
    _warn_guesses(path, conventions, layout)
    run = _OnnxRun(
        session=session,
        input_name=inp.name,
        output_name=session.get_outputs()[0].name,
        dtype=_ONNX_FLOAT_TYPES[inp.type],
        layout=layout,
        batch=shape[0] if isinstance(shape[0], int) and shape[0] > 0 else None,
        preprocess=_onnx_preprocess(conventions),
        # Output columns in the model's class order -> CLASSES order.
        columns=[conventions.class_order.index(c) for c in CLASSES] if conventions.class_order else None,
    )
    return Predictor(
        path=path,
        kind="onnx",
        img_size=size,
        channels=channels,
        description=_onnx_description(inp, run, conventions, size, channels),
        run=run,
        output=conventions.output or "unknown",
        preprocessing=preprocessing,
    )


# ---------------------------------------------------------------------------


def load_predictor(
    path: str | os.PathLike[str],
    *,
    model: str | None = None,
    img_size: int | None = None,
    head: str | None = None,
    channels: int | None = None,
    resize: str | None = None,
    onnx_conventions: Mapping[str, str] | None = None,
) -> Predictor:
    """Load the model at ``path`` (any of :data:`KINDS`) behind a :class:`Predictor`.

    Args:
        path: model file or SavedModel folder.
        model, head, channels: architecture of a weights-only file that has no
            ``run_config.json`` beside it (``model`` is then required; ``head``
            defaults to ``flatten``, ``channels`` to 3). With a run
            configuration they may be given only if they agree with it.
        img_size: the square input size. For models with a fixed input size it
            must agree with it (or be None); for models that accept any size it
            is required; for a weights-only file without run configuration it
            defaults to 512 (SURFsara's).
        resize: how images are resized (``data.images.RESIZE_METHODS``); None:
            what the checkpoint records, else ``"baseline"``. Given, it wins
            over the record, with a warning when they differ
            (:mod:`evaluation.preprocessing`); :attr:`Predictor.preprocessing`
            holds the outcome.
        onnx_conventions: for ONNX models, ``covidx.*`` metadata values
            (:mod:`evaluation.onnx_metadata`) to use where the model's own
            metadata lacks them; what neither says is guessed, with a warning.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: one line naming the file and why it cannot be used.
    """
    path = Path(path)
    if img_size is not None and img_size < 1:
        raise ValueError(f"--img_size must be >= 1, received {img_size}")
    if resize is not None:
        check_resize(resize, what="--resize")
    kind = detect_kind(path)
    if onnx_conventions and kind != "onnx":
        raise ValueError(
            f"{', '.join(sorted(onnx_conventions))}: only for ONNX models; checkpoint {path} is "
            f"{with_article(KIND_NAMES[kind])}"
        )
    if kind != "keras-weights":
        extra = {"--model": model, "--head": head, "--channels": channels}
        given = [flag for flag, value in extra.items() if value is not None]
        if given:
            raise ValueError(
                f"{', '.join(given)}: only for weights-only checkpoints; checkpoint {path} is "
                f"{with_article(KIND_NAMES[kind])}, which holds its own architecture"
            )
    if kind == "onnx":
        return _load_onnx(path, img_size, onnx_conventions, resize)
    # A Keras or TensorFlow model trained by train_keras.py: its run folder records the resize (and, for
    # weights only, the architecture), read once.
    record = run_record(path)
    preprocessing = choose_preprocessing(
        resize, None if record is None else record.recorded, checkpoint=path
    )
    if kind in ("keras-h5", "keras"):
        predictor = _load_keras_file(path, kind, img_size)
    elif kind == "keras-weights":
        predictor = _load_keras_weights(
            path, record=record, model=model, img_size=img_size, head=head, channels=channels
        )
    else:
        predictor = _load_saved_model(path, img_size)
    return dataclasses.replace(predictor, preprocessing=preprocessing)
