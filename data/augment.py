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
index, so a run is reproducible whatever the number of parallel calls. The
pipeline counts that index from the start of the run (``data.pipeline``), so a
run resumed at any step draws exactly what an uninterrupted run draws there.

:func:`mixup_batch` is the mixup of the ImageNet-transfer study (fastai v1's
``MixUpCallback``, Zhang et al. 2018), applied to a whole batch after the
augmentation (``--mixup ALPHA``).
"""
from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from typing import Any

import tensorflow as tf


@dataclasses.dataclass(frozen=True)
class AugmentConfig:
    """Ranges of the random transform; the defaults are SURFsara's.

    A run records its augmentation with :meth:`to_dict` (``run_config.json``),
    as it records its model spec, so that a later change of these defaults
    cannot change what a recorded run means.
    """

    rotation_deg: float = 10.0
    width_shift: float = 0.1
    height_shift: float = 0.1
    horizontal_flip: bool = True
    brightness: tuple[float, float] = (0.9, 1.1)

    def __post_init__(self) -> None:
        if self.rotation_deg < 0 or self.width_shift < 0 or self.height_shift < 0:
            raise ValueError(f"augmentation ranges must be >= 0, received {self}")
        if len(self.brightness) != 2:
            raise ValueError(f"brightness range must be (low, high), received {self.brightness}")
        lo, hi = self.brightness
        if not 0 < lo <= hi:
            raise ValueError(f"brightness range must satisfy 0 < low <= high, received {self.brightness}")

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict of every field (the brightness range as a list)."""
        values = dataclasses.asdict(self)
        values["brightness"] = list(self.brightness)
        return values

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> AugmentConfig:
        """Inverse of :meth:`to_dict`; every field must be there (a record names all its values)."""
        names = [f.name for f in dataclasses.fields(cls)]
        missing = [name for name in names if name not in data]
        unknown = sorted(set(data) - set(names))
        if missing or unknown:
            raise ValueError(
                f"an augmentation record needs exactly the fields {', '.join(names)}; received "
                f"{sorted(data)} (missing {missing or 'none'}, unknown {unknown or 'none'})"
            )
        values = dict(data)
        values["brightness"] = tuple(float(v) for v in values["brightness"])
        return cls(**values)


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
        raise ValueError(
            f"augment_batch needs a static image height and width, received shape {images.shape}"
        )
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


# Tag folded into a batch's seed so mixup's draws are independent of the augmentation's.
_MIXUP_STREAM = 0x6D6978


def mixup_draws(n: tf.Tensor | int, seed: tf.Tensor, alpha: float) -> tuple[tf.Tensor, tf.Tensor]:
    """The random part of :func:`mixup_batch`: per-row weights ``lam`` ``[n]`` and partners ``perm`` ``[n]``.

    As fastai v1's ``MixUpCallback``: one ``lam ~ Beta(alpha, alpha)`` per row,
    replaced by ``max(lam, 1 - lam)`` so every row stays dominated by its own
    image (its argmax label is unchanged), and a random permutation of the batch
    that pairs each row with a partner (possibly itself). ``seed`` is a shape-[2]
    int tensor; the draws are a function of it alone.
    """
    if not alpha > 0:
        raise ValueError(f"mixup alpha must be > 0, received {alpha}")
    seed = tf.random.experimental.stateless_fold_in(tf.cast(seed, tf.int64), _MIXUP_STREAM)
    seeds = tf.random.experimental.stateless_split(seed, num=3)
    # Beta(a, a) = G1 / (G1 + G2) with G ~ Gamma(a); float64 because for small alpha
    # the gamma draws can underflow float32 to 0 (both 0: the row is left unmixed).
    g1 = tf.random.stateless_gamma([n], seeds[0], alpha=tf.constant(alpha, tf.float64), dtype=tf.float64)
    g2 = tf.random.stateless_gamma([n], seeds[1], alpha=tf.constant(alpha, tf.float64), dtype=tf.float64)
    total = g1 + g2
    lam = tf.where(total > 0, g1 / tf.where(total > 0, total, 1.0), 1.0)
    lam = tf.cast(tf.maximum(lam, 1.0 - lam), tf.float32)
    perm = tf.argsort(tf.random.stateless_uniform([n], seeds[2]))
    return lam, perm


def mixup_batch(
    images: tf.Tensor,
    labels: tf.Tensor,
    weights: tf.Tensor | None,
    seed: tf.Tensor,
    alpha: float,
) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor | None]:
    """Mix every row of a batch with a partner row of the same batch.

    ``images`` ``[N, H, W, C]``, ``labels`` one-hot ``[N, K]``, ``weights``
    per-sample loss weights ``[N]`` (or None). With ``lam, perm =
    mixup_draws(N, seed, alpha)`` row ``i`` becomes ``lam[i] * row[i] + (1 -
    lam[i]) * row[perm[i]]`` for the image, the label (so labels are mixed
    one-hots: rows still sum to 1) and the weight. Mixing the class weights
    with the same ``lam`` makes the weighted loss ``w_mix * CE(p, y_mix)``;
    fastai weighted the two cross-entropies separately (``lam * w_i * CE_i +
    (1 - lam) * w_j * CE_j``), which is the same whenever the two rows have the
    same class weight (see docs/training.md).
    """
    images, labels = tf.convert_to_tensor(images), tf.convert_to_tensor(labels)
    weights = None if weights is None else tf.convert_to_tensor(weights)
    n = tf.shape(images)[0]
    lam, perm = mixup_draws(n, seed, alpha)

    def mix(x: tf.Tensor) -> tf.Tensor:
        w = tf.reshape(tf.cast(lam, x.dtype), [-1] + [1] * (x.shape.rank - 1))
        return w * x + (1 - w) * tf.gather(x, perm)

    return mix(images), mix(labels), None if weights is None else mix(weights)
