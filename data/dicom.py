"""DICOM to 8-bit grayscale, the way the COVIDx sources need it.

:func:`dicom_to_uint8` turns one single-frame grayscale DICOM into a ``uint8``
array ready to be written as PNG:

1. decode the pixel data with pydicom and its plugins (native, JPEG baseline
   and lossless, JPEG 2000, RLE: whatever the installed plugins handle);
2. apply the modality LUT or rescale (``apply_modality_lut``);
3. apply the VOI LUT sequence if there is one, else the first window
   (centre/width, with its LINEAR / LINEAR_EXACT / SIGMOID function);
4. scale to 0..255: by the output range of the VOI LUT or window when one was
   applied, else by the image's own minimum and maximum (as COVID-Net's RICORD
   notebook did); values are rounded to the nearest integer;
5. invert MONOCHROME1 images, so that air is always dark.

One exception keeps COVID-Net's RSNA bytes: an unsigned 8-bit image with no
modality transform and no VOI LUT or window is used as stored (only inverted if
it is MONOCHROME1). COVID-Net wrote ``ds.pixel_array`` of the RSNA files
straight to PNG; min-max scaling them would change every image.

Anything that cannot be one grayscale image raises :class:`DicomError` (a
``ValueError``) whose message is the reason: not a DICOM file, no pixel data,
truncated or undecodable pixel data, colour (RGB, YBR, palette) images,
multi-frame images.
"""
from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.pixels import apply_modality_lut, apply_voi_lut

_GRAYSCALE = ("MONOCHROME1", "MONOCHROME2")
# The Pixel Data tag (7FE0,0010) as little- and big-endian bytes: when it is in
# the file but pydicom could not read the element, the file was cut short.
_PIXEL_DATA_TAG_BYTES = (b"\xe0\x7f\x10\x00", b"\x7f\xe0\x00\x10")


class DicomError(ValueError):
    """A DICOM file that cannot become one 8-bit grayscale image; the message says why."""


def read_dicom(path: str | os.PathLike[str], *, header_only: bool = False) -> Dataset:
    """Read a DICOM file; :class:`DicomError` if it is not one.

    With ``header_only`` the pixel data are not read (fast, for filtering on
    tags such as ``ViewPosition``). ``FileNotFoundError`` is raised as is.
    """
    path = Path(path)
    try:
        if header_only:
            return pydicom.dcmread(path, stop_before_pixels=True)
        raw = path.read_bytes()
        ds = pydicom.dcmread(io.BytesIO(raw))
    except (FileNotFoundError, IsADirectoryError, PermissionError):
        raise
    except InvalidDicomError as exc:
        raise DicomError(f"not a DICOM file ({exc})") from None
    except Exception as exc:  # pydicom raises many types on damaged files
        raise DicomError(f"unreadable DICOM file ({type(exc).__name__}: {exc})") from None
    if "PixelData" not in ds and any(tag in raw for tag in _PIXEL_DATA_TAG_BYTES):
        raise DicomError("truncated file: the pixel data element is incomplete")
    return ds


def _frames(ds: Dataset) -> int:
    try:
        return int(ds.get("NumberOfFrames", 1) or 1)
    except (TypeError, ValueError):
        return 1


def check_grayscale_image(ds: Dataset) -> None:
    """Raise :class:`DicomError` unless ``ds`` holds one grayscale frame of pixel data."""
    if "PixelData" not in ds:
        if "FloatPixelData" in ds or "DoubleFloatPixelData" in ds:
            raise DicomError("float pixel data are not supported")
        raise DicomError("no pixel data (not an image)")
    samples = int(ds.get("SamplesPerPixel", 1) or 1)
    photometric = str(ds.get("PhotometricInterpretation", "")).strip()
    if samples != 1 or photometric not in _GRAYSCALE:
        raise DicomError(
            f"not a grayscale image (PhotometricInterpretation {photometric or 'missing'!r}, "
            f"{samples} samples per pixel); only MONOCHROME1/MONOCHROME2 are converted"
        )
    frames = _frames(ds)
    if frames > 1:
        raise DicomError(f"multi-frame image ({frames} frames); only single images are converted")


def _has_modality_transform(ds: Dataset) -> bool:
    if ds.get("ModalityLUTSequence"):
        return True
    slope = ds.get("RescaleSlope")
    intercept = ds.get("RescaleIntercept")
    if slope is None or intercept is None:
        return False
    return float(slope) != 1.0 or float(intercept) != 0.0


def _has_voi_lut(ds: Dataset) -> bool:
    seq = ds.get("VOILUTSequence")
    return bool(seq) and seq[0].get("LUTDescriptor") is not None and seq[0].get("LUTData") is not None


def _has_window(ds: Dataset) -> bool:
    return ds.get("WindowCenter") is not None and ds.get("WindowWidth") is not None


def _first(value: object) -> float:
    if isinstance(value, (list, tuple, pydicom.multival.MultiValue)):
        return float(value[0])
    return float(value)  # type: ignore[arg-type]


def _voi_output_range(ds: Dataset) -> tuple[float, float]:
    """Output range of the VOI LUT or first window that ``apply_voi_lut`` applies."""
    if _has_voi_lut(ds):
        depth = int(ds.VOILUTSequence[0].LUTDescriptor[2])
        return 0.0, float(2**depth - 1)
    # Probe the window far below and far above its centre: whatever output range
    # pydicom uses for this dataset (it depends on the bits stored, the sign and
    # any rescale), these two values are its ends, for LINEAR and SIGMOID alike.
    center = _first(ds.WindowCenter)
    width = max(_first(ds.WindowWidth), 1.0)
    probe = np.array([center - 100.0 * width, center + 100.0 * width], dtype=np.float64)
    lo, hi = apply_voi_lut(probe, ds, index=0)
    return float(lo), float(hi)


def _to_uint8(values: np.ndarray, lo: float, hi: float) -> np.ndarray:
    if hi == lo:
        return np.zeros(values.shape, dtype=np.uint8)
    scaled = (values.astype(np.float64) - lo) / (hi - lo)
    return np.rint(np.clip(scaled, 0.0, 1.0) * 255.0).astype(np.uint8)


def _voi_lut_dataset(ds: Dataset) -> Dataset:
    """The dataset to give ``apply_voi_lut`` for the first VOI LUT.

    pydicom 3.0 stores the clipped LUT indices in the dtype of the LUT entries,
    so an 8-bit LUT with more than 256 entries (a 12-bit input, say) wraps its
    indices. DICOM stores 8-bit LUT entries in 16-bit words anyway, so the LUT
    is handed over declared as 16 bit: same values, indices that do not wrap.
    """
    item = ds.VOILUTSequence[0]
    if int(item.LUTDescriptor[2]) != 8:
        return ds
    lut = Dataset()
    lut.LUTDescriptor = [int(item.LUTDescriptor[0]), int(item.LUTDescriptor[1]), 16]
    lut.add_new("LUTData", item["LUTData"].VR, item.LUTData)
    mini = Dataset()
    if hasattr(ds, "file_meta"):
        mini.file_meta = ds.file_meta
    mini.set_original_encoding(*ds.original_encoding)
    mini.VOILUTSequence = [lut]
    return mini


def _apply_luts(pixels: np.ndarray, ds: Dataset) -> np.ndarray:
    values = apply_modality_lut(pixels, ds)
    if _has_voi_lut(ds):
        if not np.issubdtype(values.dtype, np.integer):
            # A VOI LUT is indexed by integer values; rescaled values are floats.
            values = np.rint(values).astype(np.int64)
        lo, hi = _voi_output_range(ds)
        values = apply_voi_lut(values, _voi_lut_dataset(ds), index=0)
    elif _has_window(ds):
        lo, hi = _voi_output_range(ds)
        values = apply_voi_lut(values, ds, index=0)
    else:
        lo, hi = float(values.min()), float(values.max())
    return _to_uint8(values, lo, hi)


def dicom_to_uint8(source: str | os.PathLike[str] | Dataset) -> np.ndarray:
    """Convert a grayscale DICOM (a path or a read dataset) to a ``uint8`` array ``[H, W]``.

    See the module docstring for the steps. Raises :class:`DicomError` with the
    reason when the file cannot be one 8-bit grayscale image.
    """
    ds = source if isinstance(source, Dataset) else read_dicom(source)
    check_grayscale_image(ds)
    try:
        pixels = ds.pixel_array
    except Exception as exc:  # decoders raise anything on damaged or unsupported data
        syntax = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
        name = getattr(syntax, "name", str(syntax)) if syntax is not None else "unknown transfer syntax"
        raise DicomError(f"cannot decode pixel data ({name}): {type(exc).__name__}: {exc}") from None
    if pixels.ndim != 2:
        raise DicomError(f"expected one 2-D grayscale frame, decoded an array of shape {pixels.shape}")

    invert = str(ds.PhotometricInterpretation).strip() == "MONOCHROME1"
    transformed = _has_modality_transform(ds) or _has_voi_lut(ds) or _has_window(ds)
    if pixels.dtype == np.uint8 and not transformed:
        image = pixels
    else:
        try:
            image = _apply_luts(pixels, ds)
        except (ValueError, TypeError, IndexError, KeyError, AttributeError, NotImplementedError) as exc:
            raise DicomError(
                f"cannot apply the modality/VOI transform: {type(exc).__name__}: {exc}"
            ) from None
    if invert:
        image = 255 - image
    return np.ascontiguousarray(image, dtype=np.uint8)
