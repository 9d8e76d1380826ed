"""Image decoding and resizing shared by training, the cache, serving and prediction.

Two resize methods, named by what they reproduce:

- ``"baseline"``: SURFsara's ``cv2.resize(x, (size, size))``, i.e. bilinear
  interpolation without antialiasing (TensorFlow's ``tf.image.resize``
  ``bilinear``, ``antialias=False``), aspect ratio not kept.
- ``"torchvision"``: the PyTorch studies' ``torchvision.transforms.Resize((S, S))``
  on PIL images, which is Pillow's ``Image.resize((S, S), BILINEAR)``: a
  triangle filter widened by the scale factor when downscaling (so every source
  pixel contributes: antialiased), applied horizontally then vertically in
  Pillow's 22-bit fixed-point arithmetic with a uint8 result after each pass.
  :func:`resize_torchvision` emulates those integer steps exactly in TensorFlow
  ops, so the pixels equal Pillow's bit for bit (tested against Pillow) while
  running in the tf.data graph.

Both return float32 in ``[0, 1]`` (``/ 255``, as SURFsara's script and
torchvision's ``ToTensor()`` divide).
"""
from __future__ import annotations

import tensorflow as tf

RESIZE_METHODS: tuple[str, ...] = ("baseline", "torchvision")

# Pillow's fixed point (libImaging/Resample.c): 32 bits - 8 for the pixel - 2 for overflow.
_PRECISION_BITS = 32 - 8 - 2


def _pil_bilinear_coefficients(in_size: tf.Tensor, out_size: int) -> tuple[tf.Tensor, tf.Tensor]:
    """Pillow's ``precompute_coeffs`` + ``normalize_coeffs_8bpc`` for the bilinear filter.

    Returns ``(indices, weights)``, both ``[out_size, ksize]`` int32: output
    pixel ``i`` is ``sum_j image[indices[i, j]] * weights[i, j]`` in fixed
    point. Unused taps have weight 0 (and a valid index).
    """
    in_f = tf.cast(in_size, tf.float64)
    scale = in_f / tf.constant(out_size, tf.float64)
    filterscale = tf.maximum(scale, 1.0)
    support = filterscale  # the bilinear filter's support is 1.0
    ksize = tf.cast(tf.math.ceil(support), tf.int32) * 2 + 1
    center = (tf.range(out_size, dtype=tf.float64) + 0.5) * scale
    # C's (int) cast truncates toward zero; tf.cast from float does too.
    xmin = tf.maximum(tf.cast(center - support + 0.5, tf.int32), 0)
    xmax = tf.minimum(tf.cast(center + support + 0.5, tf.int32), in_size)
    count = xmax - xmin
    taps = tf.range(ksize)[tf.newaxis, :]
    x = tf.cast(taps + xmin[:, tf.newaxis], tf.float64)
    distance = tf.abs((x - center[:, tf.newaxis] + 0.5) * (1.0 / filterscale))
    weights = tf.where((taps < count[:, tf.newaxis]) & (distance < 1.0), 1.0 - distance, 0.0)
    # Pillow sums the taps left to right; a tree reduction could differ in the last bit and,
    # rarely, flip a rounding below. foldl keeps the order.
    total = tf.foldl(lambda acc, column: acc + column, tf.transpose(weights),
                     initializer=tf.zeros([out_size], tf.float64))
    weights = tf.where(total[:, tf.newaxis] != 0.0, weights / total[:, tf.newaxis], weights)
    fixed = weights * float(1 << _PRECISION_BITS)
    fixed = tf.where(fixed < 0, fixed - 0.5, fixed + 0.5)  # then truncated toward zero, as in C
    indices = tf.minimum(taps + xmin[:, tf.newaxis], in_size - 1)
    return indices, tf.cast(fixed, tf.int32)


def _pil_pass(image: tf.Tensor, out_size: int, axis: int) -> tf.Tensor:
    """One of Pillow's 8-bit resampling passes along ``axis`` (0 rows, 1 columns) of int32 ``[H, W, C]``."""
    indices, weights = _pil_bilinear_coefficients(tf.shape(image)[axis], out_size)
    gathered = tf.gather(image, indices, axis=axis)  # [..., out, ksize, ...]
    if axis == 1:
        weighted = gathered * weights[tf.newaxis, :, :, tf.newaxis]
        total = tf.reduce_sum(weighted, axis=2)
    else:
        weighted = gathered * weights[:, :, tf.newaxis, tf.newaxis]
        total = tf.reduce_sum(weighted, axis=1)
    # Integer sums are exact in any order; the rounding offset and the shift are Pillow's clip8.
    total = total + (1 << (_PRECISION_BITS - 1))
    return tf.clip_by_value(tf.bitwise.right_shift(total, _PRECISION_BITS), 0, 255)


def resize_torchvision(image: tf.Tensor, size: int) -> tf.Tensor:
    """``uint8 [H, W, C]`` -> ``uint8 [size, size, C]`` exactly as Pillow's bilinear ``resize``.

    That is what ``torchvision.transforms.Resize((size, size))`` does to a PIL
    image (``antialias`` only matters for tensors; PIL always filters). Pillow
    resizes in two passes, rounding to uint8 in between; so does this function,
    in the order Pillow 13 chooses.
    """
    if size < 1:
        raise ValueError(f"resize size must be >= 1, received {size}")
    pixels = tf.cast(image, tf.int32)
    height, width = tf.shape(pixels)[0], tf.shape(pixels)[1]
    # Pillow 13 (python-pillow/Pillow#9549) runs the vertical pass first when the height shrinks by more
    # than twice as many pixels as the width; the order changes the uint8 rounding between the passes.
    # Earlier Pillow always went horizontal first: for chest X-rays (aspect ratio near 1) both agree.
    vertical_first = (height - size) > 2 * tf.maximum(width - size, 0)
    resized = tf.cond(
        vertical_first,
        lambda: _pil_pass(_pil_pass(pixels, size, axis=0), size, axis=1),
        lambda: _pil_pass(_pil_pass(pixels, size, axis=1), size, axis=0),
    )
    return tf.cast(resized, tf.uint8)


def resize_image(image: tf.Tensor, size: int, *, method: str = "baseline") -> tf.Tensor:
    """Resize a decoded ``uint8 [H, W, C]`` image to ``[size, size, C]`` float32 in ``[0, 1]``.

    ``method`` is one of :data:`RESIZE_METHODS` (see the module docstring).
    """
    if method == "baseline":
        resized = tf.image.resize(image, [size, size], method="bilinear", antialias=False)
    elif method == "torchvision":
        resized = tf.cast(resize_torchvision(image, size), tf.float32)
    else:
        raise ValueError(f"resize method must be one of {', '.join(RESIZE_METHODS)}, received {method!r}")
    return tf.ensure_shape(resized, [size, size, image.shape[-1]]) / 255.0
