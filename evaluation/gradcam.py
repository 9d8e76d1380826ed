"""Grad-CAM heat maps (Selvaraju et al. 2017) for Keras models, written as PNG overlays.

The seed study used them to catch a model that read the text printed on the
X-rays instead of the lungs. For each image the score is the predicted class's
pre-softmax logit (recomputed from the output ``Dense`` layer's input, kernel
and bias, because the registry fuses the softmax into ``FC_3``; for a model
whose output layer is not a ``Dense`` the class probability is used). Its
gradient with respect to a convolutional feature map, averaged over the map's
height and width, weights the map's channels; the ReLU of the weighted sum is
the heat map, scaled to [0, 1] per image.

The feature map is, by default, the last layer output of the network that is a
4-D ``[N, H, W, C]`` map larger than 1 x 1 (a 1 x 1 map cannot localise
anything): ``post_relu`` for ResNet50V2, ``block5_relu``/``block5_pool`` for
``smallcnn``. Any other layer can be named.

Everything runs in a functional sub-model under ``tf.GradientTape``; overlays
are drawn with OpenCV's colour map (no matplotlib state) at the size of the
original image and written atomically.
"""
from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from common.fsutil import atomic_path
from data.labels import CLASSES
from data.lists import ListEntry

DEFAULT_ALPHA = 0.4


def feature_map_layers(model: Any) -> list[str]:
    """Names of the layers whose output is a 4-D feature map ``[N, H, W, C]``, in model order."""
    import keras

    names = []
    for layer in model.layers:
        if isinstance(layer, keras.layers.InputLayer):
            continue
        try:
            shape = layer.output.shape
        except (AttributeError, ValueError):  # a layer used several times has no single output
            continue
        if len(shape) == 4:
            names.append(layer.name)
    return names


def find_gradcam_layer(model: Any) -> str:
    """The last 4-D feature map with more than 1 x 1 positions (see the module docstring)."""
    candidates = feature_map_layers(model)
    if not candidates:
        raise ValueError(f"model {model.name!r} has no 4-D feature map layer to compute Grad-CAM on")
    for name in reversed(candidates):
        height, width = model.get_layer(name).output.shape[1:3]
        if height is None or width is None or height * width > 1:
            return name
    return candidates[-1]


def _output_dense(model: Any) -> Any | None:
    """The output layer when it is a ``Dense`` whose output is the model's output, else None."""
    import keras

    last = model.layers[-1]
    if isinstance(last, keras.layers.Dense) and last.output is model.outputs[0]:
        return last
    return None


class GradCam:
    """Grad-CAM of one Keras model at one feature-map layer.

    Args:
        model: a functional ``keras.Model`` with one image input and one ``[n, 3]`` output.
        layer_name: the feature map; None = :func:`find_gradcam_layer`.
    """

    def __init__(self, model: Any, layer_name: str | None = None) -> None:
        import keras

        self.model = model
        if layer_name is None:
            layer_name = find_gradcam_layer(model)
        candidates = feature_map_layers(model)
        if layer_name not in candidates:
            shown = ", ".join(candidates[-8:]) or "none"
            raise ValueError(
                f"--gradcam_layer {layer_name!r} is not a 4-D feature map layer of model {model.name!r}; "
                f"the last ones are: {shown}"
            )
        self.layer_name = layer_name
        self._dense = _output_dense(model)
        features = model.get_layer(layer_name).output
        second = self._dense.input if self._dense is not None else model.outputs[0]
        try:
            self._grad_model = keras.Model(model.inputs, [features, second, model.outputs[0]])
        except Exception as exc:  # e.g. a subclassed model without a functional graph
            raise ValueError(f"cannot build a Grad-CAM sub-model of {model.name!r}: {exc}") from exc
        self.score = "logit" if self._dense is not None else "probability"

    def heatmaps(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``(maps, probabilities)``: maps ``[n, h, w]`` in [0, 1] for each image's predicted class."""
        import keras
        import tensorflow as tf

        x = tf.convert_to_tensor(np.asarray(images, dtype=np.float32))
        with tf.GradientTape() as tape:
            features, second, probabilities = self._grad_model(x, training=False)
            predicted = tf.argmax(probabilities, axis=1)
            if self._dense is not None:
                logits = keras.ops.matmul(second, self._dense.kernel)
                if self._dense.use_bias:
                    logits = logits + self._dense.bias
            else:
                logits = probabilities
            score = tf.gather(logits, predicted, axis=1, batch_dims=1)
        grads = tape.gradient(score, features)
        weights = tf.reduce_mean(grads, axis=(1, 2), keepdims=True)
        cam = tf.nn.relu(tf.reduce_sum(weights * features, axis=-1)).numpy().astype(np.float64)
        peak = cam.reshape(len(cam), -1).max(axis=1)
        cam = np.divide(cam, peak[:, None, None], out=np.zeros_like(cam), where=peak[:, None, None] > 0)
        return cam, probabilities.numpy().astype(np.float64)


def overlay(image_rgb: np.ndarray, heatmap: np.ndarray, *, alpha: float = DEFAULT_ALPHA) -> np.ndarray:
    """Blend a [0, 1] heat map (any size) over an RGB ``uint8`` image; returns BGR ``uint8`` for cv2."""
    import cv2

    height, width = image_rgb.shape[:2]
    heat = cv2.resize(heatmap.astype(np.float32), (width, height), interpolation=cv2.INTER_LINEAR)
    coloured = cv2.applyColorMap(np.uint8(np.clip(heat, 0.0, 1.0) * 255.0), cv2.COLORMAP_JET)
    base = cv2.cvtColor(image_rgb, cv2.COLOR_RGB2BGR)
    return cv2.addWeighted(base, 1.0 - alpha, coloured, alpha, 0.0)


def overlay_name(entry: ListEntry, predicted: int) -> str:
    """``<image stem>_true-<class>_pred-<class>.png``; folders in the list's file name become ``__``."""
    stem = entry.filename.replace("\\", "/")
    stem = stem.rsplit(".", 1)[0] if "." in stem.rsplit("/", 1)[-1] else stem
    stem = re.sub(r"[^A-Za-z0-9._()+-]", "_", stem.replace("/", "__"))
    return f"{stem}_true-{entry.label}_pred-{CLASSES[predicted]}.png"


def select_per_class(entries: Sequence[ListEntry], per_class: int) -> list[int]:
    """Indices of the first ``per_class`` entries of each class, in list order."""
    taken = {c: 0 for c in CLASSES}
    chosen = []
    for i, e in enumerate(entries):
        if taken[e.label] < per_class:
            taken[e.label] += 1
            chosen.append(i)
    return chosen


@dataclasses.dataclass(frozen=True)
class GradCamResult:
    """What :func:`write_gradcam_overlays` wrote, into ``folder``."""

    layer: str
    score: str
    paths: list[Path]
    folder: Path

    def summary(self) -> str:
        """One line for the evaluation's output."""
        return (
            f"Grad-CAM: {len(self.paths)} overlays in {self.folder} "
            f"(layer {self.layer}, score: predicted class {self.score})"
        )


def _read_rgb(path: Path) -> np.ndarray:
    from data.images import decode_image

    # The pipeline's decoder (8-bit, 3 channels), so every format it reads can be overlaid.
    return decode_image(path.read_bytes(), channels=3).numpy()


def write_gradcam_overlays(
    model: Any,
    entries: Sequence[ListEntry],
    image_dir: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    *,
    per_class: int,
    img_size: int,
    channels: int,
    layer_name: str | None = None,
    batch_size: int = 16,
    alpha: float = DEFAULT_ALPHA,
    resize: str = "baseline",
) -> GradCamResult:
    """Write Grad-CAM overlays for the first ``per_class`` images of each class of ``entries``.

    Images are preprocessed by the evaluation pipeline (``make_predict_dataset``,
    with ``resize``: the method the model was trained with);
    each overlay has the size of the original image and is named by
    :func:`overlay_name`. Returns the layer used and the written paths.
    """
    import cv2

    from data.pipeline import image_paths, make_predict_dataset

    if per_class < 1:
        raise ValueError(f"--gradcam must be >= 1 image per class, received {per_class}")
    cam = GradCam(model, layer_name)
    chosen = [entries[i] for i in select_per_class(entries, per_class)]
    paths = image_paths(chosen, image_dir)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    ds = make_predict_dataset(
        paths, img_size=img_size, batch_size=batch_size, channels=channels, resize=resize
    )
    position = 0
    for batch in ds:
        maps, probabilities = cam.heatmaps(batch.numpy())
        for heat, probs in zip(maps, probabilities):
            entry, source = chosen[position], Path(paths[position])
            position += 1
            target = out / overlay_name(entry, int(np.argmax(probs)))
            image = overlay(_read_rgb(source), heat, alpha=alpha)
            with atomic_path(target) as tmp:
                if not cv2.imwrite(str(tmp), image):
                    raise OSError(f"could not write Grad-CAM overlay {target}")
            written.append(target)
    return GradCamResult(layer=cam.layer_name, score=cam.score, paths=written, folder=out)
