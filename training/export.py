"""Saving models so that any TensorFlow code can load them.

- :func:`write_portable_h5`: a full-model HDF5 file that loads with
  ``keras.models.load_model`` (Keras 3) *and* ``tf_keras.models.load_model``
  (the Keras 2 API of TensorFlow <= 2.15 and of tf_keras), with no
  ``custom_objects`` and no project code. Keras 3 writes its HDF5 model config
  in a form Keras 2 cannot parse (``batch_shape`` inputs, dtype-policy objects,
  new node records); the config is rewritten in Keras 2's form, which Keras 3
  reads too. The weights part is already in Keras 2's layout.
- :func:`export_saved_model`: a SavedModel for TensorFlow Serving with two
  signatures: ``serving_default`` takes float32 images ``[N, H, W, C]`` scaled
  to [0, 1] as in training; ``serving_bytes`` takes encoded PNG/JPEG bytes and
  decodes, resizes and scales inside the graph.
- :func:`float32_model`: the inference copy of a training model (float32
  compute, same weights), so a model trained in mixed precision runs at full
  speed on a CPU and loads where mixed precision is not set up.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import h5py
import keras
import tensorflow as tf

from common.fsutil import atomic_dir, atomic_path

# Config keys Keras 3 adds that Keras 2 layers, initializers and inputs reject.
_KERAS3_ONLY_KEYS = frozenset(
    {"quantization_config", "lora_rank", "lora_alpha", "optional", "input_axes", "output_axes"}
)


def _keras2_value(obj: Any) -> Any:
    if isinstance(obj, dict):
        if obj.get("class_name") == "DTypePolicy" and "config" in obj:
            return obj["config"]["name"]
        return {
            k: _keras2_value(v)
            for k, v in obj.items()
            if k not in _KERAS3_ONLY_KEYS and k not in ("module", "registered_name")
        }
    if isinstance(obj, list):
        return [_keras2_value(v) for v in obj]
    return obj


def _node_refs(args: Any) -> list[list[Any]]:
    refs: list[list[Any]] = []
    for arg in args:
        if isinstance(arg, dict) and arg.get("class_name") == "__keras_tensor__":
            layer, node, tensor = arg["config"]["keras_history"]
            refs.append([layer, node, tensor, {}])
        elif isinstance(arg, (list, tuple)):
            refs.extend(_node_refs(arg))
    return refs


def keras2_model_config(config: dict[str, Any]) -> dict[str, Any]:
    """Rewrite a Keras 3 functional-model config in Keras 2's HDF5 form.

    Only plain functional graphs of built-in layers are supported (what the
    model registry builds): every layer call takes tensors as positional
    arguments, and keyword arguments only at their default ``None``.
    """
    if config.get("class_name") not in ("Functional", "Model"):
        raise ValueError(f"only functional models can be exported, received {config.get('class_name')}")
    body = dict(config["config"])
    layers = []
    for layer in body["layers"]:
        layer_config = dict(layer["config"])
        if layer["class_name"] == "InputLayer":
            layer_config["batch_input_shape"] = layer_config.pop("batch_shape")
        for node in layer["inbound_nodes"]:
            # Keras 3 records default call arguments such as BatchNormalization's mask=None.
            extra = {k: v for k, v in (node.get("kwargs") or {}).items() if v is not None}
            if extra:
                raise ValueError(
                    "only layers called with tensors as positional arguments can be exported; received "
                    f"layer {layer['name']!r} called with keyword arguments {sorted(extra)}"
                )
        layers.append(
            {
                "class_name": layer["class_name"],
                "config": _keras2_value(layer_config),
                "name": layer["name"],
                "inbound_nodes": [_node_refs(node["args"]) for node in layer["inbound_nodes"]],
            }
        )
    body["layers"] = layers
    for key in ("input_layers", "output_layers"):
        value = body[key]
        if value and not isinstance(value[0], list):
            value = [value]
        body[key] = value
    return {"class_name": "Functional", "config": body}


def write_portable_h5(model: keras.Model, path: str | os.PathLike[str]) -> Path:
    """Save ``model`` (architecture + weights, no optimizer) as an HDF5 file Keras 2 and 3 load."""
    path = Path(path)
    if path.suffix not in (".h5", ".hdf5"):
        raise ValueError(f"an HDF5 model file name must end in .h5 or .hdf5, received {path}")
    with atomic_path(path) as tmp:
        model.save(str(tmp), include_optimizer=False)
        with h5py.File(tmp, "r+") as f:
            config = json.loads(f.attrs["model_config"])
            f.attrs["model_config"] = json.dumps(keras2_model_config(config)).encode("utf8")
            if "training_config" in f.attrs:
                del f.attrs["training_config"]
    return path


def float32_model(model: keras.Model, rebuild) -> keras.Model:
    """The inference copy of a training model: ``rebuild(dtype_policy='float32')`` with its weights.

    Always a fresh model, built outside any distribution strategy: float32
    compute whatever the training policy was, plain variables instead of
    mirrored ones, and none of the training-time layer settings (such as
    synchronized batch normalisation) in the saved configuration.
    """
    copy = rebuild(dtype_policy="float32")
    copy.set_weights(model.get_weights())
    return copy


def decode_for_serving(
    image_bytes: tf.Tensor, *, img_size: int, channels: int, resize: str = "baseline"
) -> tf.Tensor:
    """Encoded PNG/JPEG bytes to a float32 ``[img_size, img_size, channels]`` image in [0, 1].

    The training pipeline's decode and resize (:func:`data.images.decode_resize`,
    ``resize`` one of :data:`data.images.RESIZE_METHODS`), inside the graph.
    """
    from data.images import decode_resize

    return decode_resize(image_bytes, img_size=img_size, channels=channels, resize=resize)


def export_saved_model(
    model: keras.Model, directory: str | os.PathLike[str], *, resize: str = "baseline"
) -> Path:
    """Write a SavedModel with ``serving_default`` (float images) and ``serving_bytes`` (encoded images).

    ``serving_bytes`` decodes and resizes as the run was trained (``resize``, one of
    :data:`data.images.RESIZE_METHODS`), so a client sends the original PNG/JPEG.

    Written into a hidden ``.partial-*`` folder beside ``directory`` and
    swapped in (``common.fsutil.atomic_dir``), so a killed export never leaves
    a half-written SavedModel under the final name, and what it does leave is
    removed by the next run's ``remove_partials``.
    """
    directory = Path(directory)
    _, img_size, width, channels = model.input_shape
    if img_size is None or img_size != width:
        raise ValueError(
            "SavedModel export needs a square, fixed input size; received a model input of "
            f"{model.input_shape}"
        )

    archive = keras.export.ExportArchive()
    archive.track(model)
    archive.add_endpoint(
        name="serving_default",
        fn=lambda images: {"probabilities": model(images, training=False)},
        input_signature=[tf.TensorSpec([None, img_size, img_size, channels], tf.float32, name="images")],
    )

    def from_bytes(image_bytes):
        images = tf.map_fn(
            lambda b: decode_for_serving(b, img_size=img_size, channels=channels, resize=resize),
            image_bytes,
            fn_output_signature=tf.TensorSpec([img_size, img_size, channels], tf.float32),
        )
        return {"probabilities": model(images, training=False)}

    archive.add_endpoint(
        name="serving_bytes",
        fn=from_bytes,
        input_signature=[tf.TensorSpec([None], tf.string, name="image_bytes")],
    )
    with atomic_dir(directory) as tmp:
        write_archive(archive, tmp)
    return directory


def write_archive(archive: keras.export.ExportArchive, folder: Path) -> None:
    """Write ``archive`` as a SavedModel into ``folder`` (the hidden temporary one, before the swap).

    A function of its own so that tests/test_fault_injection_train.py can kill the process right after
    the SavedModel is complete but before it has its name: Keras 3 returns a backend subclass from
    ``ExportArchive()``, whose ``write_out`` is not the one ``keras.export.ExportArchive`` shows.
    """
    archive.write_out(str(folder), verbose=False)
