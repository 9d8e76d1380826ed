"""Image files in, pixels out: one implementation for training, the cache, serving, predict.py and Grad-CAM.

Every reader of images in the project goes through this module, so that they
cannot drift apart:

- **signatures**: :func:`image_format` tells PNG, JPEG, GIF and BMP apart by
  their first bytes; :func:`header_problem` also finds an empty file or one cut
  short (no PNG ``IEND`` chunk / JPEG ``FFD9`` marker / GIF trailer in its last
  KiB, a BMP shorter than its header says); :func:`decode_problem` decodes bytes
  with OpenCV and Pillow (the dataset builder's check of its sources);
  :func:`is_dicom_file` recognises DICOM for ``predict.py``.
- **EXIF orientation**: ``cv2.imread`` (SURFsara's and COVID-Net's reader)
  applies it, TensorFlow's decoders do not. ``create_covidx.py`` writes such
  JPEGs upright (:func:`upright_jpeg`) and ``predict.py`` turns a user's JPEG
  upright the same way, so every reader sees the same pixels.
- **bit depth and channels**: :func:`decode_image` returns ``uint8`` with the
  channels asked for: a 16-bit PNG keeps its high byte (as ``cv2.imread``
  makes it 8 bit), an alpha channel is dropped, grey and colour images are
  converted.
- **resizing** (:data:`RESIZE_METHODS`), named by what they reproduce:

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

  Both give float32 in ``[0, 1]`` (``/ 255``, as SURFsara's script and
  torchvision's ``ToTensor()`` divide): :func:`resize_image`;
  :func:`resize_uint8` gives the same pixels rounded to ``uint8`` (the cache).
- **decode and resize** in one step: :func:`decode_resize` (encoded bytes, the
  serving signature) and :func:`read_resize` (a file path, the tf.data
  pipeline); :func:`read_image` / :func:`load_image` read one PNG, JPEG, BMP,
  GIF or DICOM file for ``predict.py`` with the same steps, and
  :func:`check_radiograph_shape` refuses images whose size cannot be a chest
  radiograph (rule: :data:`MIN_SIDE`, :data:`MAX_ASPECT`, :data:`WARN_MIN_SIDE`,
  :data:`WARN_ASPECT`).

TensorFlow is imported inside the functions that run its ops, so the dataset
builder's worker processes (signature checks, EXIF, OpenCV) never load it.
"""
from __future__ import annotations

import dataclasses
import io
import os
import re
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import tensorflow as tf

# -- signatures ----------------------------------------------------------------------------------

# The formats tf.io.decode_image reads, by their first bytes.
SIGNATURES: dict[bytes, str] = {
    b"\x89PNG\r\n\x1a\n": "PNG",
    b"\xff\xd8\xff": "JPEG",
    b"GIF87a": "GIF",
    b"GIF89a": "GIF",
    b"BM": "BMP",
}
PNG_END = b"IEND\xaeB`\x82"  # the IEND chunk's type and CRC, the last 8 bytes of every PNG
JPEG_END = b"\xff\xd9"
# The end of a complete file of each format is looked for in its last TAIL_BYTES bytes: writers may pad
# after the end marker (zeros after a JPEG's FFD9 are common), and a file cut short has no marker there.
TAIL_BYTES = 1024
_DICOM_SUFFIXES = (".dcm", ".dicom")


def image_format(head: bytes) -> str | None:
    """``"PNG"``, ``"JPEG"``, ``"GIF"`` or ``"BMP"`` from a file's first (8 or more) bytes, else None."""
    return next((kind for magic, kind in SIGNATURES.items() if head.startswith(magic)), None)


def truncation_problem(kind: str, head: bytes, tail: bytes, size: int) -> str | None:
    """Why a ``kind`` file of ``size`` bytes (first bytes ``head``, last ``tail``) is cut short, or None."""
    if kind == "PNG" and PNG_END not in tail:
        return "truncated PNG (no IEND chunk at its end)"
    if kind == "JPEG" and JPEG_END not in tail:
        return "truncated JPEG (no FFD9 end marker at its end)"
    if kind == "GIF" and not tail.rstrip(b"\x00").endswith(b";"):
        return "truncated GIF (no trailer byte at its end)"
    if kind == "BMP" and len(head) >= 6:
        declared = int.from_bytes(head[2:6], "little")
        if declared > size:
            return f"truncated BMP ({size} of the {declared} bytes its header declares)"
    return None


def header_problem(path: str | os.PathLike[str]) -> str | None:
    """Why a file is not a complete PNG/JPEG/BMP/GIF image, from its first 8 bytes and last KiB, or None."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(8)
            if not head:
                return "empty file"
            kind = image_format(head)
            if kind is None:
                return "not a PNG, JPEG, BMP or GIF image"
            size = os.fstat(fh.fileno()).st_size
            fh.seek(max(0, size - TAIL_BYTES))
            tail = fh.read(TAIL_BYTES)
    except FileNotFoundError:
        return "file does not exist"
    except OSError as exc:
        return f"cannot be read ({exc.strerror})"
    return truncation_problem(kind, head, tail, size)


def not_an_image(data: bytes) -> str:
    """Why bytes that match no image signature are refused, naming common look-alikes."""
    if data.startswith(b"%PDF-"):
        return (
            "a PDF document, not an image (it starts with %PDF-); export the radiograph from it as PNG "
            "or JPEG, or give the DICOM file"
        )
    if data.startswith((b"II*\x00", b"MM\x00*")):
        return "a TIFF image, which is not supported; convert it to PNG (lossless)"
    return "not a PNG, JPEG, BMP, GIF or DICOM image"


def is_dicom_file(path: str | os.PathLike[str]) -> bool:
    """True for a DICOM file: the ``DICM`` marker at byte 128, or a ``.dcm``/``.dicom`` name."""
    path = Path(path)
    if path.suffix.lower() in _DICOM_SUFFIXES:
        return True
    with open(path, "rb") as fh:
        head = fh.read(132)
    return head[128:132] == b"DICM"


def decode_problem(data: bytes) -> str | None:
    """Why ``data`` is not a complete, decodable image, or None (OpenCV and Pillow, no TensorFlow).

    libjpeg only warns about a JPEG that ends early and OpenCV may then return
    a half-grey image, so JPEGs are checked with Pillow, which refuses
    truncated files (decoded at 1/8 scale: the check reads every byte but
    costs a fraction of a full decode). Other formats must decode with OpenCV.
    """
    if image_format(data) == "JPEG":
        from PIL import Image

        try:
            with Image.open(io.BytesIO(data)) as im:
                im.draft("L", (max(1, im.width // 8), max(1, im.height // 8)))
                im.load()
        except Exception as exc:  # Pillow raises OSError, SyntaxError, ValueError... on damaged data
            return f"damaged JPEG ({type(exc).__name__}: {exc})"
        return None
    if cv2_decode(data) is None:
        return "cannot be decoded (damaged, truncated or not an image)"
    return None


def cv2_decode(data: bytes, *, color: bool = False) -> np.ndarray | None:
    """``cv2.imdecode``: 8-bit 3 channels (BGR) with ``color``, else as stored; None when it fails."""
    import cv2

    if not data:
        return None
    flags = cv2.IMREAD_COLOR if color else cv2.IMREAD_UNCHANGED
    return cv2.imdecode(np.frombuffer(data, dtype=np.uint8), flags)


# -- EXIF orientation ----------------------------------------------------------------------------

_EXIF_ORIENTATION = 0x0112


def exif_orientation(data: bytes) -> int:
    """The EXIF orientation of a JPEG: 1 when stored upright or untagged, 2-8 when flipped or rotated."""
    if image_format(data) != "JPEG":
        return 1
    from PIL import Image

    try:
        with Image.open(io.BytesIO(data)) as im:
            return int(im.getexif().get(_EXIF_ORIENTATION, 1) or 1)
    except Exception:  # a damaged header has no usable orientation; decode_problem reports the damage
        return 1


def upright_jpeg(data: bytes) -> bytes:
    """The JPEG rotated/flipped as its EXIF orientation says, re-encoded without the tag.

    cv2.imread (SURFsara's and COVID-Net's reader) applies the EXIF orientation;
    TensorFlow's decoders do not. Writing the image upright makes every reader
    see the same pixels. Re-encoding is at quality 100 without chroma
    subsampling, the closest to lossless a JPEG allows.
    """
    from PIL import Image, ImageOps

    with Image.open(io.BytesIO(data)) as im:
        upright = ImageOps.exif_transpose(im)
        out = io.BytesIO()
        upright.save(out, format="JPEG", quality=100, subsampling=0)
    return out.getvalue()


# -- decoding (TensorFlow) -----------------------------------------------------------------------


def decode_image(data: tf.Tensor | bytes, *, channels: int) -> tf.Tensor:
    """Encoded PNG/JPEG/BMP/GIF bytes to ``uint8 [H, W, channels]`` (first frame of a GIF).

    A 16-bit PNG keeps its high byte, as ``cv2.imread`` makes it 8 bit; an
    alpha channel is dropped; grey and colour are converted to ``channels``.
    """
    import tensorflow as tf

    image = tf.io.decode_image(data, channels=channels, dtype=tf.uint8, expand_animations=False)
    return tf.ensure_shape(image, [None, None, channels]) if channels else image


def tf_decode_problem(path: str | os.PathLike[str]) -> str | None:
    """Why TensorFlow cannot decode an image file (as training would), or None."""
    import tensorflow as tf

    try:
        decode_image(tf.io.read_file(str(path)), channels=0)
    except (tf.errors.InvalidArgumentError, tf.errors.NotFoundError) as exc:
        return f"cannot be decoded ({exc.message.splitlines()[0]})"
    return None


# -- resizing (TensorFlow) -----------------------------------------------------------------------

RESIZE_METHODS: tuple[str, ...] = ("baseline", "torchvision")

# Pillow's fixed point (libImaging/Resample.c): 32 bits - 8 for the pixel - 2 for overflow.
_PRECISION_BITS = 32 - 8 - 2


def _pil_bilinear_coefficients(in_size: tf.Tensor, out_size: int) -> tuple[tf.Tensor, tf.Tensor]:
    """Pillow's ``precompute_coeffs`` + ``normalize_coeffs_8bpc`` for the bilinear filter.

    Returns ``(indices, weights)``, both ``[out_size, ksize]`` int32: output
    pixel ``i`` is ``sum_j image[indices[i, j]] * weights[i, j]`` in fixed
    point. Unused taps have weight 0 (and a valid index).
    """
    import tensorflow as tf

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
    import tensorflow as tf

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
    import tensorflow as tf

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


def _resize(image: tf.Tensor, size: int, method: str) -> tf.Tensor:
    """``uint8 [H, W, C]`` resized to float32 ``[size, size, C]`` in [0, 255] by ``method``."""
    import tensorflow as tf

    if method == "baseline":
        return tf.image.resize(image, [size, size], method="bilinear", antialias=False)
    if method == "torchvision":
        return tf.cast(resize_torchvision(image, size), tf.float32)
    raise ValueError(f"resize method must be one of {', '.join(RESIZE_METHODS)}, received {method!r}")


def resize_image(image: tf.Tensor, size: int, *, method: str = "baseline") -> tf.Tensor:
    """Resize a decoded ``uint8 [H, W, C]`` image to ``[size, size, C]`` float32 in ``[0, 1]``.

    ``method`` is one of :data:`RESIZE_METHODS` (see the module docstring).
    """
    import tensorflow as tf

    return tf.ensure_shape(_resize(image, size, method), [size, size, image.shape[-1]]) / 255.0


def resize_uint8(image: tf.Tensor, size: int, *, method: str = "baseline") -> tf.Tensor:
    """:func:`resize_image`'s pixels before the division, rounded to the nearest ``uint8`` (for storing)."""
    import tensorflow as tf

    resized = tf.ensure_shape(_resize(image, size, method), [size, size, image.shape[-1]])
    return tf.cast(tf.round(tf.clip_by_value(resized, 0.0, 255.0)), tf.uint8)


def decode_resize(
    data: tf.Tensor | bytes, *, img_size: int, channels: int = 3, resize: str = "baseline"
) -> tf.Tensor:
    """Encoded image bytes to float32 ``[img_size, img_size, channels]`` in [0, 1]: what a model is fed.

    :func:`decode_image` then :func:`resize_image` with ``resize``
    (:data:`RESIZE_METHODS`); used by the tf.data pipeline, the serving
    signature and :func:`read_image`.
    """
    return resize_image(decode_image(data, channels=channels), img_size, method=resize)


def read_resize(
    path: tf.Tensor | str, *, img_size: int, channels: int = 3, resize: str = "baseline"
) -> tf.Tensor:
    """:func:`decode_resize` of the file at ``path`` (a string tensor inside tf.data)."""
    import tensorflow as tf

    return decode_resize(tf.io.read_file(path), img_size=img_size, channels=channels, resize=resize)


# -- single files (predict.py) -------------------------------------------------------------------

# Image sizes (original pixels, before resizing) that can be a chest radiograph. The public sources
# range from ~150-300 px a side (figures cut from papers, the COVID-19 Radiography Database's 256/299 px)
# to 4,000+ px (DICOM, Actualmed); the 203 real samples in ../shared/realdata have a shorter side of
# 157-4,000+ px and aspect ratios (long side / short side) of 1.0-1.76. Below MIN_SIDE or beyond
# MAX_ASPECT there is no radiograph to classify (an icon, a 1-pixel strip, a banner): refused. Below
# WARN_MIN_SIDE or beyond WARN_ASPECT it is odd but possible (a thumbnail, a crop, two films side by
# side): predicted with a warning.
MIN_SIDE = 32
MAX_ASPECT = 4.0
WARN_MIN_SIDE = 128
WARN_ASPECT = 2.0


@dataclasses.dataclass(frozen=True, eq=False)
class LoadedImage:
    """One image ready for a model, with the size it had before resizing.

    Attributes:
        pixels: float32 ``[img_size, img_size, channels]`` in [0, 1].
        height, width: the original size in pixels (after the DICOM conversion or EXIF rotation).
    """

    pixels: np.ndarray
    height: int
    width: int


def check_radiograph_shape(height: int, width: int) -> str | None:
    """Refuse an image size that cannot be a chest radiograph; return a warning for an odd one, else None.

    Refused (``ValueError``): shorter side below :data:`MIN_SIDE` px or aspect
    ratio (long side / short side) beyond :data:`MAX_ASPECT`. Warned: shorter
    side below :data:`WARN_MIN_SIDE` px or aspect ratio beyond
    :data:`WARN_ASPECT`. See the constants for where the limits come from.
    """
    short, long = min(height, width), max(height, width)
    aspect = long / short if short > 0 else float("inf")
    size = f"{width}x{height} px (width x height)"
    if short < MIN_SIDE or aspect > MAX_ASPECT:
        raise ValueError(
            f"image is {size}: cannot be a chest radiograph (allowed: shorter side at least {MIN_SIDE} px "
            f"and aspect ratio at most 1:{MAX_ASPECT:g}; real chest X-rays are 150-4,000+ px, about 1:1 to "
            f"1:1.8)"
        )
    odd = []
    if short < WARN_MIN_SIDE:
        odd.append(f"shorter side below {WARN_MIN_SIDE} px, smaller than public chest X-rays")
    if aspect > WARN_ASPECT:
        odd.append(f"aspect ratio 1:{aspect:.3g}, beyond the 1:{WARN_ASPECT:g} of public chest X-rays")
    if odd:
        return f"image is {size} ({'; '.join(odd)}); predicted anyway, check that it is a chest radiograph"
    return None


def _tf_reason(exc: BaseException) -> str:
    """A TensorFlow op error's message without its ``{{function_node ...}}`` and ``[Op:...]`` decorations."""
    text = getattr(exc, "message", None) or str(exc)
    text = re.sub(r"\{\{function_node [^}]*\}\}\s*", "", text)
    text = re.sub(r"\s*\[Op:\w+\](\s*name:\s*\S*)?", "", text)
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[0] if lines else type(exc).__name__


def _encoded_bytes(path: Path) -> bytes:
    """The file's image as encoded bytes TensorFlow decodes: DICOM converted to PNG, JPEG turned upright."""
    if is_dicom_file(path):
        import cv2

        from data.dicom import dicom_to_uint8

        try:
            pixels = dicom_to_uint8(path)
        except ValueError as exc:  # data.dicom.DicomError: the reason
            raise ValueError(f"cannot be converted from DICOM ({exc})") from None
        ok, encoded = cv2.imencode(".png", pixels)
        if not ok:  # pragma: no cover - encoding a uint8 array does not fail
            raise ValueError("could not re-encode the DICOM pixels")
        return encoded.tobytes()
    data = path.read_bytes()
    if not data:
        raise ValueError("empty file (0 bytes)")
    if image_format(data) is None:
        raise ValueError(not_an_image(data))
    if exif_orientation(data) != 1:
        # create_covidx.py writes such JPEGs upright; a user's own file gets the same treatment.
        data = upright_jpeg(data)
    return data


def read_image(
    path: str | os.PathLike[str], *, img_size: int, channels: int, resize: str = "baseline"
) -> LoadedImage:
    """Read, convert and resize one image file as the evaluation pipeline does.

    PNG, JPEG, BMP and GIF go through :func:`decode_image` and
    :func:`resize_image` (``resize``: :data:`RESIZE_METHODS`), the steps of
    :func:`decode_resize`, done apart so the original size is known. A DICOM
    file is first converted to 8-bit grayscale by ``data.dicom.dicom_to_uint8``,
    as ``create_covidx.py`` does before writing its PNG. A JPEG with an EXIF
    orientation is turned upright first, as ``create_covidx.py`` writes it.
    Raises ``FileNotFoundError``/``ValueError`` with the reason (the size is
    not checked here: :func:`check_radiograph_shape`).
    """
    import tensorflow as tf

    path = Path(path)
    if not path.exists():
        raise FileNotFoundError("file does not exist")
    if path.is_dir():
        raise ValueError("is a folder, not an image file")
    data = _encoded_bytes(path)
    try:
        decoded = decode_image(data, channels=channels)
    except tf.errors.OpError as exc:
        raise ValueError(f"cannot be decoded ({_tf_reason(exc)}); the file is damaged or truncated") from None
    image = tf.ensure_shape(resize_image(decoded, img_size, method=resize), [img_size, img_size, channels])
    return LoadedImage(
        pixels=image.numpy().astype(np.float32), height=int(decoded.shape[0]), width=int(decoded.shape[1])
    )


def load_image(
    path: str | os.PathLike[str], *, img_size: int, channels: int, resize: str = "baseline"
) -> np.ndarray:
    """One image file as float32 ``[img_size, img_size, channels]`` in [0, 1] (see :func:`read_image`)."""
    return read_image(path, img_size=img_size, channels=channels, resize=resize).pixels
