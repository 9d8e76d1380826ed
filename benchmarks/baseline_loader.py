"""The reference loader: training batches read the way SURFsara's baseline read them.

SURFsara's ``BalanceDataGenerator`` was a ``keras.utils.Sequence`` whose
``__getitem__`` ran in one Python process (``fit_generator`` with one worker
thread), image by image::

    x = cv2.imread(path)                                  # 3 channels, uint8
    x = cv2.resize(x, (img_size, img_size))               # bilinear
    x = ImageDataGenerator(...).random_transform(x)       # Keras 2, scipy per channel
    x = x.astype('float32') / 255.0

with ``ImageDataGenerator(rotation_range=10, width_shift_range=0.1,
height_shift_range=0.1, horizontal_flip=True, brightness_range=(0.9, 1.1),
fill_mode='constant', cval=0.)``. :class:`BalancedSequence` does exactly that
with the same numpy/scipy/cv2 calls, so its images/s is what the baseline's
loader achieves on the same cores. The random transform reproduces
keras-preprocessing 1.1's ``get_random_transform`` / ``apply_transform``
(``apply_affine_transform``: rotation then shift about the image centre,
``scipy.ndimage.affine_transform`` of order 1 on every channel, constant
fill), then the flip and the brightness factor.

One deliberate simplification, in the baseline's favour: Keras 2 applied the
brightness factor through PIL (``array_to_img`` with rescaling to 0-255,
``ImageEnhance.Brightness``, ``img_to_array``); here it is one numpy multiply
and clip, which is cheaper, so the measured baseline is if anything too fast.

Batches are balanced as in ``data.pipeline``: ``batch_size - covid_per_batch``
normal/pneumonia images in shuffled list order and ``covid_per_batch``
COVID-19 images drawn at random, with per-sample class weights. Nothing here
imports TensorFlow, so timing it measures only the loader.
"""
from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import scipy.ndimage as ndi

from data.labels import CLASS_TO_INDEX, NUM_CLASSES
from data.lists import ListEntry


@dataclasses.dataclass(frozen=True)
class Keras2Augment:
    """``ImageDataGenerator`` arguments of the baseline (SURFsara's values are the defaults)."""

    rotation_range: float = 10.0
    width_shift_range: float = 0.1
    height_shift_range: float = 0.1
    horizontal_flip: bool = True
    brightness_range: tuple[float, float] | None = (0.9, 1.1)
    fill_mode: str = "constant"
    cval: float = 0.0
    interpolation_order: int = 1


def get_random_transform(shape: Sequence[int], rng: np.random.Generator,
                         augment: Keras2Augment = Keras2Augment()) -> dict[str, Any]:
    """Draw the parameters of one random transform for an image of ``shape`` (rows, cols, channels).

    As keras-preprocessing: ``tx`` is the shift along rows and ``ty`` along
    columns, both in pixels (fractions of the height and width).
    """
    h, w = shape[0], shape[1]
    theta = rng.uniform(-augment.rotation_range, augment.rotation_range) if augment.rotation_range else 0.0
    tx = (
        rng.uniform(-augment.height_shift_range, augment.height_shift_range) * h
        if augment.height_shift_range
        else 0.0
    )
    ty = (
        rng.uniform(-augment.width_shift_range, augment.width_shift_range) * w
        if augment.width_shift_range
        else 0.0
    )
    flip = bool(augment.horizontal_flip and rng.random() < 0.5)
    brightness = None
    if augment.brightness_range is not None:
        brightness = float(rng.uniform(augment.brightness_range[0], augment.brightness_range[1]))
    return {
        "theta": float(theta),
        "tx": float(tx),
        "ty": float(ty),
        "flip_horizontal": flip,
        "brightness": brightness,
    }


def transform_matrix_offset_center(matrix: np.ndarray, x: int, y: int) -> np.ndarray:
    """keras-preprocessing's centring of a homogeneous transform on an ``x`` by ``y`` image."""
    o_x = float(x) / 2 - 0.5
    o_y = float(y) / 2 - 0.5
    offset = np.array([[1, 0, o_x], [0, 1, o_y], [0, 0, 1]])
    reset = np.array([[1, 0, -o_x], [0, 1, -o_y], [0, 0, 1]])
    return offset @ matrix @ reset


def apply_affine_transform(
    x: np.ndarray,
    *,
    theta: float = 0.0,
    tx: float = 0.0,
    ty: float = 0.0,
    fill_mode: str = "constant",
    cval: float = 0.0,
    order: int = 1,
) -> np.ndarray:
    """Rotate by ``theta`` degrees and shift by (``tx``, ``ty``) pixels a ``[rows, cols, channels]`` image.

    keras-preprocessing's ``apply_affine_transform`` for channels-last input:
    one ``scipy.ndimage.affine_transform`` per channel; the output keeps the
    input's dtype.
    """
    matrix = None
    if theta != 0:
        t = np.deg2rad(theta)
        matrix = np.array([[np.cos(t), -np.sin(t), 0], [np.sin(t), np.cos(t), 0], [0, 0, 1]])
    if tx != 0 or ty != 0:
        shift = np.array([[1, 0, tx], [0, 1, ty], [0, 0, 1]])
        matrix = shift if matrix is None else matrix @ shift
    if matrix is None:
        return x
    h, w = x.shape[0], x.shape[1]
    matrix = transform_matrix_offset_center(matrix, h, w)
    channels = [
        ndi.affine_transform(x[..., c], matrix[:2, :2], matrix[:2, 2], order=order, mode=fill_mode, cval=cval)
        for c in range(x.shape[2])
    ]
    return np.stack(channels, axis=-1)


def apply_transform(
    x: np.ndarray, params: dict[str, Any], augment: Keras2Augment = Keras2Augment()
) -> np.ndarray:
    """Apply drawn parameters: affine transform, horizontal flip, brightness (values kept in range).

    ``x`` is uint8 ``[rows, cols, channels]`` as cv2 gives it; the result is
    float32 on the same 0-255 scale.
    """
    out = apply_affine_transform(
        x,
        theta=params["theta"],
        tx=params["tx"],
        ty=params["ty"],
        fill_mode=augment.fill_mode,
        cval=augment.cval,
        order=augment.interpolation_order,
    )
    if params["flip_horizontal"]:
        out = out[:, ::-1, :]
    out = out.astype(np.float32)
    if params["brightness"] is not None:
        out = np.clip(out * np.float32(params["brightness"]), 0.0, 255.0)
    return out


def random_transform(
    x: np.ndarray, rng: np.random.Generator, augment: Keras2Augment = Keras2Augment()
) -> np.ndarray:
    """``ImageDataGenerator.random_transform``: draw parameters with ``rng`` and apply them."""
    return apply_transform(x, get_random_transform(x.shape, rng, augment), augment)


def load_image(
    path: str | os.PathLike[str],
    *,
    img_size: int,
    rng: np.random.Generator | None,
    augment: Keras2Augment | None = Keras2Augment(),
) -> np.ndarray:
    """One training image the baseline way: float32 ``[img_size, img_size, 3]`` in [0, 1].

    ``cv2.imread``, ``cv2.resize``, the random transform when ``augment`` is
    given, then ``/ 255``.
    """
    x = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if x is None:
        raise ValueError(
            f"{path}: cv2.imread could not read the image; received a missing or undecodable file"
        )
    x = cv2.resize(x, (img_size, img_size))
    if augment is not None:
        if rng is None:
            raise ValueError("load_image: augmentation needs a random generator (rng), received None")
        x = random_transform(x, rng, augment)
    return x.astype(np.float32) / 255.0


class BalancedSequence:
    """SURFsara's ``BalanceDataGenerator``: a Keras-style Sequence of balanced, augmented batches.

    ``len(seq)`` batches make an epoch (one pass over the normal/pneumonia
    images); ``seq[i]`` returns ``(images, one_hot_labels, sample_weights)``;
    :meth:`on_epoch_end` reshuffles. Everything runs in the calling thread.
    """

    def __init__(
        self,
        entries: Sequence[ListEntry],
        image_dir: str | os.PathLike[str],
        *,
        img_size: int,
        batch_size: int,
        covid_per_batch: int = 1,
        class_weights: Sequence[float] = (1.0, 1.0, 25.0),
        augment: Keras2Augment | None = Keras2Augment(),
        seed: int = 0,
    ) -> None:
        if not 1 <= covid_per_batch < batch_size:
            raise ValueError(
                f"balanced batches need 1 <= COVID-19 images per batch < batch size; received "
                f"{covid_per_batch} with batch size {batch_size}"
            )
        if len(class_weights) != NUM_CLASSES:
            raise ValueError(f"class_weights needs {NUM_CLASSES} values, received {len(class_weights)}")
        covid = CLASS_TO_INDEX["COVID-19"]
        root = Path(image_dir)
        self._others = [
            (str(root / e.filename), CLASS_TO_INDEX[e.label])
            for e in entries
            if CLASS_TO_INDEX[e.label] != covid
        ]
        self._covids = [(str(root / e.filename), covid) for e in entries if CLASS_TO_INDEX[e.label] == covid]
        if not self._others or len(self._covids) < covid_per_batch:
            raise ValueError(
                f"balanced batches need normal/pneumonia images and at least {covid_per_batch} "
                f"COVID-19 images; received {len(self._others)} and {len(self._covids)}"
            )
        self.img_size = img_size
        self.batch_size = batch_size
        self.covid_per_batch = covid_per_batch
        self.class_weights = np.asarray(class_weights, np.float32)
        self.augment = augment
        self.rng = np.random.default_rng(seed)
        self.on_epoch_end()

    def __len__(self) -> int:
        return math.ceil(len(self._others) / (self.batch_size - self.covid_per_batch))

    def on_epoch_end(self) -> None:
        """Reshuffle the normal/pneumonia images for the next epoch."""
        self._order = self.rng.permutation(len(self._others))

    def __getitem__(self, index: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        if not 0 <= index < len(self):
            raise IndexError(f"batch index must be in [0, {len(self)}); received {index}")
        n_other = self.batch_size - self.covid_per_batch
        # The last batch of an epoch wraps around so that every batch is full, as fit() expects.
        picks = [self._others[self._order[(index * n_other + j) % len(self._others)]] for j in range(n_other)]
        covid_idx = self.rng.choice(len(self._covids), size=self.covid_per_batch, replace=False)
        picks += [self._covids[i] for i in covid_idx]
        batch_x = np.zeros((self.batch_size, self.img_size, self.img_size, 3), np.float32)
        batch_y = np.zeros(self.batch_size, np.int64)
        for i, (path, label) in enumerate(picks):
            batch_x[i] = load_image(path, img_size=self.img_size, rng=self.rng, augment=self.augment)
            batch_y[i] = label
        return batch_x, np.eye(NUM_CLASSES, dtype=np.float32)[batch_y], self.class_weights[batch_y]
