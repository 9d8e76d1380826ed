"""SURFsara's augmentation in TensorFlow: same geometry as Keras 2's ImageDataGenerator, same ranges."""
from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.ndimage as ndi
import tensorflow as tf

from data.augment import AugmentConfig, affine_transforms, augment_batch


def _keras2_matrix(h: int, w: int, theta_deg: float, shift_rows: float, shift_cols: float):
    """keras_preprocessing's apply_affine_transform matrix, as (linear part, offset) for scipy."""
    th = math.radians(theta_deg)
    rotation = np.array([[math.cos(th), -math.sin(th), 0], [math.sin(th), math.cos(th), 0], [0, 0, 1]])
    shift = np.array([[1, 0, shift_rows], [0, 1, shift_cols], [0, 0, 1]])
    o_r, o_c = h / 2 - 0.5, w / 2 - 0.5
    m = np.array([[1, 0, o_r], [0, 1, o_c], [0, 0, 1]]) @ rotation @ shift @ np.array(
        [[1, 0, -o_r], [0, 1, -o_c], [0, 0, 1]]
    )
    return m[:2, :2], m[:2, 2]


@pytest.mark.parametrize("theta, rows, cols", [(7.0, 3.3, -5.2), (-10.0, -4.0, 5.6), (0.0, 0.0, 0.0)])
def test_affine_matches_image_data_generator(theta: float, rows: float, cols: float) -> None:
    rng = np.random.default_rng(0)
    h, w = 40, 56
    image = rng.random((h, w)).astype(np.float32)
    transforms = affine_transforms(
        tf.constant([theta]), tf.constant([rows]), tf.constant([cols]), height=h, width=w
    )
    out = tf.raw_ops.ImageProjectiveTransformV3(
        images=image[None, :, :, None],
        transforms=tf.cast(transforms, tf.float32),
        output_shape=[h, w],
        fill_value=0.0,
        interpolation="BILINEAR",
        fill_mode="CONSTANT",
    ).numpy()[0, :, :, 0]
    matrix, offset = _keras2_matrix(h, w, theta, rows, cols)
    ref = ndi.affine_transform(image, matrix, offset, order=1, mode="constant", cval=0.0)
    # Identical except where the image meets the fill (TF blends the edge pixel, scipy does not).
    valid = ndi.affine_transform(np.ones((h, w)), matrix, offset, order=1, mode="constant")
    interior = ndi.binary_erosion(valid > 0.999, iterations=1)
    assert interior.mean() > 0.6
    np.testing.assert_allclose(out[interior], ref[interior], atol=1e-5)


def _batch(n: int, image: np.ndarray) -> tf.Tensor:
    return tf.constant(np.repeat(image[None, :, :, None], n, axis=0).astype(np.float32))


def test_shift_range_is_ten_percent() -> None:
    size = 64
    image = np.zeros((size, size), np.float32)
    image[28:36, 28:36] = 1.0  # a centred square
    config = AugmentConfig(rotation_deg=0.0, horizontal_flip=False, brightness=(1.0, 1.0))
    out = augment_batch(_batch(300, image), tf.constant([1, 0]), config).numpy()[..., 0]
    rows, cols = np.indices((size, size))
    mass = out.sum(axis=(1, 2))
    dr = (out * rows).sum(axis=(1, 2)) / mass - 31.5
    dc = (out * cols).sum(axis=(1, 2)) / mass - 31.5
    # The content moves by minus the sampled shift: at most 10% of 64 px = 6.4 px.
    assert np.abs(dr).max() <= 6.4 + 1e-3 and np.abs(dc).max() <= 6.4 + 1e-3
    assert np.abs(dr).max() > 5.5 and np.abs(dc).max() > 5.5  # the whole range is used
    assert abs(dr.mean()) < 0.8 and abs(dc.mean()) < 0.8  # and it is centred


def test_rotation_range_is_ten_degrees() -> None:
    size = 64
    image = np.zeros((size, size), np.float32)
    image[31:33, 4:60] = 1.0  # a horizontal bar through the centre
    config = AugmentConfig(width_shift=0.0, height_shift=0.0, horizontal_flip=False, brightness=(1.0, 1.0))
    out = augment_batch(_batch(200, image), tf.constant([2, 0]), config).numpy()[..., 0]
    rows, cols = np.indices((size, size))
    angles = []
    for img in out:
        w = img / img.sum()
        r0, c0 = (w * rows).sum(), (w * cols).sum()
        cov_rc = (w * (rows - r0) * (cols - c0)).sum()
        cov_cc = (w * (cols - c0) ** 2).sum()
        cov_rr = (w * (rows - r0) ** 2).sum()
        angles.append(math.degrees(0.5 * math.atan2(2 * cov_rc, cov_cc - cov_rr)))
    angles = np.abs(angles)
    assert angles.max() <= 10.3
    assert angles.max() > 8.5


def test_flip_happens_half_the_time_and_is_a_mirror() -> None:
    rng = np.random.default_rng(3)
    image = rng.random((16, 16)).astype(np.float32)
    config = AugmentConfig(rotation_deg=0.0, width_shift=0.0, height_shift=0.0, brightness=(1.0, 1.0))
    out = augment_batch(_batch(400, image), tf.constant([3, 0]), config).numpy()[..., 0]
    same = np.all(np.isclose(out, image, atol=1e-6), axis=(1, 2))
    mirrored = np.all(np.isclose(out, image[:, ::-1], atol=1e-6), axis=(1, 2))
    assert np.all(same ^ mirrored)
    assert 0.42 < mirrored.mean() < 0.58


def test_brightness_factor_range_and_clipping() -> None:
    config = AugmentConfig(rotation_deg=0.0, width_shift=0.0, height_shift=0.0, horizontal_flip=False)
    out = augment_batch(_batch(500, np.full((8, 8), 0.5, np.float32)), tf.constant([4, 0]), config).numpy()
    factors = out[:, 0, 0, 0] / 0.5
    assert factors.min() >= 0.9 - 1e-6 and factors.max() <= 1.1 + 1e-6
    assert factors.min() < 0.91 and factors.max() > 1.09
    bright = augment_batch(_batch(200, np.ones((8, 8), np.float32)), tf.constant([4, 1]), config).numpy()
    assert bright.max() == pytest.approx(1.0) and bright.min() >= 0.9 - 1e-6


def test_stateless_draws_are_reproducible() -> None:
    rng = np.random.default_rng(5)
    batch = tf.constant(rng.random((4, 32, 32, 3)).astype(np.float32))
    a = augment_batch(batch, tf.constant([7, 11])).numpy()
    b = augment_batch(batch, tf.constant([7, 11])).numpy()
    c = augment_batch(batch, tf.constant([7, 12])).numpy()
    np.testing.assert_array_equal(a, b)
    assert np.abs(a - c).mean() > 0.01
    assert a.min() >= 0.0 and a.max() <= 1.0


def test_config_rejects_bad_ranges() -> None:
    with pytest.raises(ValueError, match="brightness"):
        AugmentConfig(brightness=(1.2, 1.1))
    with pytest.raises(ValueError, match=">= 0"):
        AugmentConfig(rotation_deg=-1)


def test_config_is_recorded_field_by_field_and_read_back() -> None:
    """run_config.json stores every parameter (item 6 of issue 12), so a new default cannot change a run."""
    import json

    record = AugmentConfig(rotation_deg=5.0, brightness=(0.8, 1.2)).to_dict()
    assert record == {"rotation_deg": 5.0, "width_shift": 0.1, "height_shift": 0.1, "horizontal_flip": True,
                      "brightness": [0.8, 1.2]}
    back = AugmentConfig.from_dict(json.loads(json.dumps(record)))
    assert back == AugmentConfig(rotation_deg=5.0, brightness=(0.8, 1.2)) and back.brightness == (0.8, 1.2)
    with pytest.raises(ValueError, match=r"received .*missing \['horizontal_flip'\]"):
        AugmentConfig.from_dict({k: v for k, v in record.items() if k != "horizontal_flip"})
    with pytest.raises(ValueError, match=r"unknown \['zoom'\]"):
        AugmentConfig.from_dict({**record, "zoom": 0.1})
    with pytest.raises(ValueError, match="brightness"):
        AugmentConfig.from_dict({**record, "brightness": [1.2, 1.1]})
