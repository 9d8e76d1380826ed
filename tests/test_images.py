"""data.images: the torchvision (Pillow) resize equals Pillow bit for bit; the baseline resize is cv2's."""
from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from data.images import RESIZE_METHODS, resize_image, resize_torchvision


def _pillow(pixels: np.ndarray, size: int) -> np.ndarray:
    mode = "L" if pixels.shape[-1] == 1 else "RGB"
    image = Image.fromarray(pixels[..., 0] if mode == "L" else pixels, mode)
    out = np.asarray(image.resize((size, size), Image.BILINEAR))
    return out[..., None] if mode == "L" else out


@pytest.mark.parametrize(
    "height, width, channels, size",
    [
        (300, 257, 1, 64),  # downscale, non-square, odd sizes: a widened (antialiasing) filter
        (1000, 900, 3, 224),  # scale ~4: 9-tap filter
        (37, 50, 1, 64),  # upscale: plain 2-tap bilinear
        (64, 64, 3, 64),  # same size: identity
        (513, 2048, 1, 224),  # very wide, mixed up/down per axis is not needed: both down
        (120, 40, 3, 96),  # down in one axis, up in the other: Pillow 13 resizes vertically first
        (
            400,
            150,
            1,
            64,
        ),  # tall, both down: the height shrinks by more than twice the width (vertical first)
    ],
)
def test_resize_torchvision_equals_pillow_bit_for_bit(
    height: int, width: int, channels: int, size: int
) -> None:
    rng = np.random.default_rng(height * width + size)
    # Smooth structure plus noise: every code path of the rounding gets exercised.
    yy, xx = np.mgrid[0:height, 0:width]
    base = 127 + 100 * np.sin(yy / 17.0) * np.cos(xx / 23.0)
    pixels = np.clip(base[..., None] + rng.normal(0, 30, (height, width, channels)), 0, 255).astype(np.uint8)
    ours = resize_torchvision(tf.constant(pixels), size).numpy()
    assert ours.shape == (size, size, channels) and ours.dtype == np.uint8
    np.testing.assert_array_equal(ours, _pillow(pixels, size))


def test_resize_torchvision_of_extremes_stays_in_range() -> None:
    pixels = np.zeros((50, 50, 1), np.uint8)
    pixels[::2] = 255
    ours = resize_torchvision(tf.constant(pixels), 7).numpy()
    np.testing.assert_array_equal(ours, _pillow(pixels, 7))
    assert ours.min() >= 0 and ours.max() <= 255


def test_resize_image_scales_to_unit_range_and_the_methods_differ_on_downscaling() -> None:
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, (256, 256, 1), dtype=np.uint8)
    baseline = resize_image(tf.constant(pixels), 32, method="baseline").numpy()
    torchvision = resize_image(tf.constant(pixels), 32, method="torchvision").numpy()
    assert baseline.dtype == torchvision.dtype == np.float32
    assert (
        0.0 <= baseline.min()
        and baseline.max() <= 1.0
        and 0.0 <= torchvision.min()
        and torchvision.max() <= 1.0
    )
    np.testing.assert_array_equal(torchvision * 255.0, _pillow(pixels, 32).astype(np.float32))
    # Noise averaged over 8x8 source pixels (antialiased) is far smoother than 4 samples of it (cv2-style).
    assert torchvision.std() < 0.5 * baseline.std()
    # The baseline is TensorFlow's bilinear without antialiasing, i.e. cv2.resize's INTER_LINEAR.
    import cv2

    expected = cv2.resize(pixels[..., 0], (32, 32), interpolation=cv2.INTER_LINEAR).astype(np.float32) / 255.0
    assert np.abs(baseline[..., 0] - expected).max() <= 1.0 / 255.0 + 1e-6


def test_unknown_method_and_bad_size_are_refused() -> None:
    image = tf.zeros([8, 8, 1], tf.uint8)
    with pytest.raises(ValueError, match="received 'pil'"):
        resize_image(image, 4, method="pil")
    with pytest.raises(ValueError, match="received 0"):
        resize_torchvision(image, 0)
    assert RESIZE_METHODS == ("baseline", "torchvision")
