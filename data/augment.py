"""SURFsara's training augmentation, as batched TensorFlow ops.

SURFsara's ``BalanceDataGenerator`` called Keras 2's
``ImageDataGenerator(rotation_range=10, width_shift_range=0.1,
height_shift_range=0.1, horizontal_flip=True, brightness_range=(0.9, 1.1),
fill_mode='constant', cval=0.).random_transform`` on every image, one at a time
in Python (scipy ``ndimage.affine_transform`` per channel). Here the same random
transform runs inside the tf.data graph on a whole batch:

1. rotation by an angle drawn uniformly from [-10°, 10°] and a shift drawn
   uniformly from [-10%, 10%] of the height and of the width, composed about
   the image centre exactly as ``apply_affine_transform`` does, with bilinear
   interpolation and constant 0 fill (``ImageProjectiveTransformV3``);
2. a horizontal flip with probability 0.5;
3. a brightness factor drawn uniformly from [0.9, 1.1], values clipped to [0, 1].

The affine part matches scipy/``ImageDataGenerator`` to float precision except
in the one-pixel band where the image meets the fill, where TensorFlow blends
the edge pixel with the fill value while scipy switches to the fill. Keras 2's
brightness shift first stretched each image to the full 0-255 range (it went
through ``array_to_img(scale=True)``); that side effect is not reproduced (see
docs/baseline.md).

Randomness is stateless: every draw is a function of ``seed`` and the batch
index, so a run is reproducible whatever the number of parallel calls.
"""
from __future__ import annotations

import dataclasses
import math

import tensorflow as tf


@dataclasses.dataclass(frozen=True)
class AugmentConfig:
    """Ranges of the random transform; the defaults are SURFsara's."""

    rotation_deg: float = 10.0
    width_shift: float = 0.1
    height_shift: float = 0.1
    horizontal_flip: bool = True
    brightness: tuple[float, float] = (0.9, 1.1)

    def __post_init__(self) -> None:
        if self.rotation_deg < 0 or self.width_shift < 0 or self.height_shift < 0:
            raise ValueError(f"augmentation ranges must be >= 0, received {self}")
        lo, hi = self.brightness
        if not 0 < lo <= hi:
            raise ValueError(f"brightness range must satisfy 0 < low <= high, received {self.brightness}")


def affine_transforms(
    theta_deg: tf.Tensor, shift_rows: tf.Tensor, shift_cols: tf.Tensor, height: int, width: int
) -> tf.Tensor:
    """Projective transform rows (``[N, 8]``) equal to ``apply_affine_transform``'s matrices.

    ``shift_rows``/``shift_cols`` are in pixels (Keras 2 called them ``tx``/``ty``).
    Keras composes ``rotation @ shift`` about the centre ``((h-1)/2, (w-1)/2)``
    and maps output (row, col) to input coordinates; TensorFlow's op wants the
    same map written for (x=col, y=row).
    """
    theta = theta_deg * (math.pi / 180.0)
    c, s = tf.cos(theta), tf.sin(theta)
    o_r = (height - 1) / 2.0
    o_c = (width - 1) / 2.0
    a0, a1 = c, s
    a2 = s * (shift_rows - o_r) + c * (shift_cols - o_c) + o_c
    b0, b1 = -s, c
    b2 = c * (shift_rows - o_r) - s * (shift_cols - o_c) + o_r
    zeros = tf.zeros_like(c)
    return tf.stack([a0, a1, a2, b0, b1, b2, zeros, zeros], axis=1)


def augment_batch(images: tf.Tensor, seed: tf.Tensor, config: AugmentConfig = AugmentConfig()) -> tf.Tensor:
    """Apply SURFsara's random transform to a float batch ``[N, H, W, C]`` in [0, 1].

    ``seed`` is a shape-[2] int tensor (e.g. ``[run_seed, batch_index]``).
    """
    images = tf.convert_to_tensor(images)
    n = tf.shape(images)[0]
    height, width = images.shape[1], images.shape[2]
    if height is None or width is None:
        raise ValueError("augment_batch needs a static image height and width")
    seeds = tf.random.experimental.stateless_split(tf.cast(seed, tf.int64), num=5)
    theta = tf.random.stateless_uniform([n], seeds[0], -config.rotation_deg, config.rotation_deg)
    rows = tf.random.stateless_uniform([n], seeds[1], -config.height_shift, config.height_shift) * height
    cols = tf.random.stateless_uniform([n], seeds[2], -config.width_shift, config.width_shift) * width
    out = tf.raw_ops.ImageProjectiveTransformV3(
        images=images,
        transforms=affine_transforms(theta, rows, cols, height, width),
        output_shape=tf.constant([height, width], tf.int32),
        fill_value=tf.constant(0.0, images.dtype),
        interpolation="BILINEAR",
        fill_mode="CONSTANT",
    )
    if config.horizontal_flip:
        flip = tf.random.stateless_uniform([n], seeds[3]) < 0.5
        out = tf.where(flip[:, None, None, None], tf.reverse(out, axis=[2]), out)
    lo, hi = config.brightness
    if (lo, hi) != (1.0, 1.0):
        factor = tf.random.stateless_uniform([n], seeds[4], lo, hi)
        out = tf.clip_by_value(out * tf.cast(factor, out.dtype)[:, None, None, None], 0.0, 1.0)
    return out
