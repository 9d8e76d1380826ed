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


def _png_files(folder) -> dict[str, np.ndarray]:
    """Colour, grey and 16-bit PNGs of odd sizes; the uint8 pixels every reader decodes (RGB order)."""
    import cv2

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(4)
    colour = cv2.GaussianBlur(rng.integers(0, 256, (70, 90, 3), dtype=np.uint8), (5, 5), 2)
    grey = cv2.GaussianBlur(rng.integers(0, 256, (120, 77), dtype=np.uint8), (5, 5), 2)
    cv2.imwrite(str(folder / "colour.png"), colour)
    cv2.imwrite(str(folder / "grey.png"), grey)
    cv2.imwrite(str(folder / "deep.png"), grey.astype(np.uint16) * 257 + 3)  # 16 bit: the high byte counts
    return {"colour.png": colour[..., ::-1], "grey.png": np.repeat(grey[..., None], 3, axis=-1),
            "deep.png": np.repeat(grey[..., None], 3, axis=-1)}


def test_file_images_with_the_torchvision_resize_equal_pillow(tmp_path) -> None:
    from data.lists import ListEntry
    from data.pipeline import FileImages, make_eval_dataset

    pixels = _png_files(tmp_path)
    entries = [ListEntry(f"p{i}", name, "normal") for i, name in enumerate(pixels)]
    source = FileImages(tmp_path)
    named = source.named(entries, img_size=32, channels=3, resize="torchvision")
    got = {name.numpy().decode(): image.numpy() for image, name in named}
    for name, rgb in pixels.items():
        np.testing.assert_array_equal(got[name] * 255.0, _pillow(rgb, 32).astype(np.float32))
    # The same pixels through every other way in: a training reference, evaluation batches.
    ref = tf.constant(str(tmp_path / "colour.png"))
    np.testing.assert_array_equal(
        source.load(ref, img_size=32, channels=3, resize="torchvision").numpy(), got["colour.png"]
    )
    batches = make_eval_dataset(entries, tmp_path, img_size=32, batch_size=2, resize="torchvision")
    evaluated = np.concatenate([x.numpy() for x, _ in batches])
    np.testing.assert_array_equal(evaluated, np.stack([got[e.filename] for e in entries]))
    # The baseline default differs from it on these downscaled images.
    baseline = source.load(ref, img_size=32, channels=3).numpy()
    assert 1.0 / 255 < np.abs(baseline - got["colour.png"]).max() < 0.5


def test_one_decode_and_resize_for_files_bytes_and_single_images(tmp_path) -> None:
    from data.images import decode_resize, read_image, read_resize, resize_uint8

    pixels = _png_files(tmp_path)
    for name in pixels:
        path = tmp_path / name
        for method in RESIZE_METHODS:
            from_file = read_resize(tf.constant(str(path)), img_size=24, channels=3, resize=method).numpy()
            from_bytes = decode_resize(path.read_bytes(), img_size=24, channels=3, resize=method).numpy()
            single = read_image(path, img_size=24, channels=3, resize=method)
            np.testing.assert_array_equal(from_file, from_bytes)
            np.testing.assert_array_equal(from_file, single.pixels)
            assert (single.height, single.width) == pixels[name].shape[:2]
            stored = resize_uint8(tf.constant(pixels[name]), 24, method=method).numpy()
            assert stored.dtype == np.uint8 and np.abs(stored - from_file * 255).max() <= 0.5 + 1e-4
    # 16 bit keeps the high byte, as cv2.imread makes it 8 bit: the same pixels as the 8-bit file.
    np.testing.assert_array_equal(
        read_resize(str(tmp_path / "deep.png"), img_size=24).numpy(),
        read_resize(str(tmp_path / "grey.png"), img_size=24).numpy(),
    )


def test_signatures_and_truncation(tmp_path) -> None:
    from data.images import header_problem, image_format, is_dicom_file, not_an_image

    _png_files(tmp_path)
    data = (tmp_path / "grey.png").read_bytes()
    assert [image_format(h) for h in (data, b"\xff\xd8\xff\xe0", b"GIF89a..", b"BM\x00", b"%PDF-1.4")] == [
        "PNG", "JPEG", "GIF", "BMP", None]
    assert header_problem(tmp_path / "grey.png") is None
    (tmp_path / "cut.png").write_bytes(data[: len(data) // 2])
    assert header_problem(tmp_path / "cut.png") == "truncated PNG (no IEND chunk at its end)"
    (tmp_path / "empty.png").write_bytes(b"")
    assert header_problem(tmp_path / "empty.png") == "empty file"
    assert header_problem(tmp_path / "absent.png") == "file does not exist"
    assert not_an_image(b"%PDF-1.4").startswith("a PDF document") and "TIFF" in not_an_image(b"II*\x00")
    (tmp_path / "x.bin").write_bytes(b"\x00" * 128 + b"DICM")
    assert is_dicom_file(tmp_path / "x.bin") and not is_dicom_file(tmp_path / "grey.png")
