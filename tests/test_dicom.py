"""DICOM -> uint8: LUTs, windows, MONOCHROME1, compressed syntaxes, and every rejection."""
from __future__ import annotations

import re
from contextlib import nullcontext
from pathlib import Path

import cv2
import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.uid import ExplicitVRLittleEndian, JPEG2000Lossless, JPEGBaseline8Bit, RLELossless, generate_uid

from data.dicom import DicomError, dicom_to_uint8, read_dicom


def make_ds(pixels: np.ndarray, *, photometric: str = "MONOCHROME2", bits_stored: int | None = None,
            signed: bool = False, samples: int = 1, frames: int | None = None, **tags) -> Dataset:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1"
    meta.MediaStorageSOPInstanceUID = generate_uid(entropy_srcs=["test"])
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.Modality = "CR"
    rows, cols = pixels.shape[-2:] if samples == 1 else pixels.shape[-3:-1]
    ds.Rows, ds.Columns = rows, cols
    ds.SamplesPerPixel = samples
    ds.PhotometricInterpretation = photometric
    if samples > 1:
        ds.PlanarConfiguration = 0
    ds.BitsAllocated = pixels.dtype.itemsize * 8
    ds.BitsStored = bits_stored or ds.BitsAllocated
    ds.HighBit = ds.BitsStored - 1
    ds.PixelRepresentation = 1 if signed else 0
    if frames is not None:
        ds.NumberOfFrames = frames
    for key, value in tags.items():
        setattr(ds, key, value)
    ds.PixelData = pixels.tobytes()
    return ds


def save(ds: Dataset, path: Path) -> Path:
    ds.save_as(path, enforce_file_format=True)
    return path


@pytest.fixture
def gradient12() -> np.ndarray:
    # 12-bit values 100..3100 on a 32x48 image
    return (100 + np.arange(32 * 48).reshape(32, 48) * 3000 // (32 * 48 - 1)).astype(np.uint16)


def test_uint8_mono2_is_returned_unchanged(tmp_path: Path) -> None:
    pixels = np.random.default_rng(0).integers(20, 200, (40, 32), dtype=np.uint8)
    out = dicom_to_uint8(save(make_ds(pixels), tmp_path / "a.dcm"))
    assert out.dtype == np.uint8 and out.shape == (40, 32)
    np.testing.assert_array_equal(out, pixels)  # no min-max stretch: COVID-Net's RSNA bytes


def test_uint8_mono1_is_exact_inverse(tmp_path: Path) -> None:
    pixels = np.random.default_rng(1).integers(0, 256, (32, 32), dtype=np.uint8)
    out = dicom_to_uint8(save(make_ds(pixels, photometric="MONOCHROME1"), tmp_path / "a.dcm"))
    np.testing.assert_array_equal(out, 255 - pixels)


def test_no_voi_is_min_max_scaled(tmp_path: Path, gradient12: np.ndarray) -> None:
    out = dicom_to_uint8(save(make_ds(gradient12, bits_stored=12), tmp_path / "a.dcm"))
    expected = np.rint((gradient12 - 100.0) / 3000.0 * 255).astype(np.uint8)
    np.testing.assert_array_equal(out, expected)
    assert (out.min(), out.max()) == (0, 255)


def test_window_uses_its_output_range_and_mono1_is_inverted(tmp_path: Path, gradient12: np.ndarray) -> None:
    ds = make_ds(gradient12, bits_stored=12, WindowCenter=1600, WindowWidth=2000)
    mono2 = dicom_to_uint8(save(ds, tmp_path / "m2.dcm"))
    # DICOM PS3.3 C.11.2.1.2.1 (LINEAR), output range 0..1
    c, w = 1600 - 0.5, 2000 - 1
    y = np.clip((gradient12 - c) / w + 0.5, 0, 1)
    np.testing.assert_array_equal(mono2, np.rint(y * 255).astype(np.uint8))
    assert mono2.min() == 0 and mono2.max() == 255  # values beyond the window saturate
    assert int(mono2[16, 24]) == int(np.rint(np.clip((gradient12[16, 24] - c) / w + 0.5, 0, 1) * 255))
    ds.PhotometricInterpretation = "MONOCHROME1"
    mono1 = dicom_to_uint8(save(ds, tmp_path / "m1.dcm"))
    np.testing.assert_array_equal(mono1, 255 - mono2)


def test_window_with_rescale(tmp_path: Path) -> None:
    raw = np.array([[0, 1000], [2000, 4095]], dtype=np.uint16)
    ds = make_ds(
        raw, bits_stored=12, RescaleSlope=1, RescaleIntercept=-1024, WindowCenter=40, WindowWidth=400
    )
    out = dicom_to_uint8(save(ds, tmp_path / "ct.dcm"))
    hu = raw.astype(float) - 1024  # -1024, -24, 976, 3071
    y = np.clip((hu - 39.5) / 399 + 0.5, 0, 1)
    np.testing.assert_array_equal(out, np.rint(y * 255).astype(np.uint8))
    assert out.tolist() == [[0, 87], [255, 255]]


def test_signed_modality_rescale_without_window_is_min_max(tmp_path: Path) -> None:
    raw = np.array([[-2000, -1000], [0, 1000]], dtype=np.int16)
    ds = make_ds(raw, signed=True, RescaleSlope=2, RescaleIntercept=10)
    out = dicom_to_uint8(save(ds, tmp_path / "s.dcm"))
    assert out.tolist() == [[0, 85], [170, 255]]


@pytest.mark.parametrize("vr", ["US", "OW"])
def test_voi_lut_sequence(tmp_path: Path, vr: str) -> None:
    raw = np.arange(64, dtype=np.uint16).reshape(8, 8) * 64  # 0..4032, 12 bits
    lut = np.rint(np.sqrt(np.arange(4096) / 4095) * 255).astype(np.uint16)  # 4096 entries, 8-bit output
    ds = make_ds(raw, bits_stored=12)
    item = Dataset()
    item.LUTDescriptor = [4096, 0, 8]
    item.add_new("LUTData", vr, lut.tolist() if vr == "US" else lut.astype("<u2").tobytes())
    ds.VOILUTSequence = [item]
    ds.WindowCenter, ds.WindowWidth = 10, 20  # the LUT wins over the window
    out = dicom_to_uint8(save(ds, tmp_path / "lut.dcm"))
    np.testing.assert_array_equal(out, lut[raw].astype(np.uint8))


@pytest.mark.parametrize("syntax, plugin", [(JPEG2000Lossless, "pylibjpeg"), (RLELossless, "pylibjpeg")])
@pytest.mark.parametrize("bits", [12, 16])
def test_lossless_compression_matches_native(tmp_path: Path, syntax, plugin, bits: int) -> None:
    rng = np.random.default_rng(bits)
    raw = rng.integers(0, 2**bits, (48, 40)).astype(np.uint16)
    native = dicom_to_uint8(
        save(make_ds(raw, photometric="MONOCHROME1", bits_stored=bits), tmp_path / "n.dcm")
    )
    ds = make_ds(raw, photometric="MONOCHROME1", bits_stored=bits)
    ds.compress(syntax, raw, encoding_plugin=plugin)
    path = save(ds, tmp_path / "c.dcm")
    assert pydicom.dcmread(path).file_meta.TransferSyntaxUID == syntax
    np.testing.assert_array_equal(dicom_to_uint8(path), native)


def test_jpeg_baseline(tmp_path: Path) -> None:
    image = np.tile(np.linspace(10, 240, 64).astype(np.uint8), (48, 1))
    ok, jpeg = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, 98])
    assert ok
    ds = make_ds(image)
    ds.file_meta.TransferSyntaxUID = JPEGBaseline8Bit
    ds.PixelData = encapsulate([jpeg.tobytes()])
    ds["PixelData"].VR = "OB"
    out = dicom_to_uint8(save(ds, tmp_path / "j.dcm"))
    assert out.shape == (48, 64)
    assert np.abs(out.astype(int) - image).max() <= 3


@pytest.mark.parametrize(
    "kind, message",
    [
        ("rgb", "not a grayscale image"),
        ("frames", "multi-frame image (2 frames)"),
        ("no_pixels", "no pixel data"),
        ("truncated_native", "cannot decode pixel data"),
        ("truncated_encapsulated", "truncated file"),
        ("not_dicom", "not a DICOM file"),
    ],
)
def test_rejections_say_why(tmp_path: Path, kind: str, message: str) -> None:
    path = tmp_path / f"{kind}.dcm"
    if kind == "rgb":
        save(make_ds(np.zeros((8, 8, 3), np.uint8), photometric="RGB", samples=3), path)
    elif kind == "frames":
        save(make_ds(np.zeros((2, 8, 8), np.uint8), frames=2), path)
    elif kind == "no_pixels":
        ds = make_ds(np.zeros((8, 8), np.uint8))
        del ds.PixelData
        save(ds, path)
    elif kind == "truncated_native":
        full = save(
            make_ds(np.zeros((64, 64), np.uint16), bits_stored=12), tmp_path / "full.dcm"
        ).read_bytes()
        path.write_bytes(full[:-1000])
    elif kind == "truncated_encapsulated":
        image = np.full((64, 64), 128, np.uint8)
        ds = make_ds(image)
        ds.file_meta.TransferSyntaxUID = JPEGBaseline8Bit
        ds.PixelData = encapsulate([cv2.imencode(".jpg", image)[1].tobytes()])
        ds["PixelData"].VR = "OB"
        full = save(ds, tmp_path / "full.dcm").read_bytes()
        path.write_bytes(full[:-20])
    elif kind == "not_dicom":
        path.write_bytes(cv2.imencode(".png", np.zeros((4, 4), np.uint8))[1].tobytes())
    warns = (
        pytest.warns(UserWarning, match="End of file") if kind == "truncated_encapsulated" else nullcontext()
    )
    with warns, pytest.raises(DicomError, match=re.escape(message)):
        dicom_to_uint8(path)


def test_dicom_error_is_a_value_error_and_missing_file_is_not_swallowed(tmp_path: Path) -> None:
    assert issubclass(DicomError, ValueError)
    with pytest.raises(FileNotFoundError):
        dicom_to_uint8(tmp_path / "missing.dcm")


def test_header_only_read_skips_pixels(tmp_path: Path) -> None:
    path = save(make_ds(np.zeros((8, 8), np.uint8), ViewPosition="PA"), tmp_path / "h.dcm")
    header = read_dicom(path, header_only=True)
    assert header.ViewPosition == "PA" and "PixelData" not in header


# -- the real public samples -------------------------------------------------------------------


@pytest.mark.realdata
def test_real_rsna_pair(realdata_dir: Path) -> None:
    folder = realdata_dir / "dicom"
    mono2 = dicom_to_uint8(folder / "rsna_cr_chest_mono2_jpeg_baseline.dcm")
    mono1 = dicom_to_uint8(folder / "rsna_cr_chest_mono1_jpeg_baseline.dcm")
    assert mono2.shape == (1024, 1024) and mono2.dtype == np.uint8
    np.testing.assert_array_equal(mono1, 255 - mono2)
    # COVID-Net wrote ds.pixel_array as is: the same bytes here
    np.testing.assert_array_equal(
        mono2, pydicom.dcmread(folder / "rsna_cr_chest_mono2_jpeg_baseline.dcm").pixel_array
    )
    png1 = cv2.imdecode(cv2.imencode(".png", mono1)[1], cv2.IMREAD_UNCHANGED)
    png2 = cv2.imdecode(cv2.imencode(".png", mono2)[1], cv2.IMREAD_UNCHANGED)
    assert (png1.astype(int) + png2 == 255).all()


@pytest.mark.realdata
def test_real_j2k_15bit_mono1_with_window(realdata_dir: Path) -> None:
    path = realdata_dir / "dicom" / "cr_chest_mono1_15bit_j2k.dcm"
    ds = pydicom.dcmread(path)
    assert ds.file_meta.TransferSyntaxUID.name.startswith("JPEG 2000") and ds.BitsStored == 15
    out = dicom_to_uint8(path)
    raw = ds.pixel_array.astype(float)
    c, w = float(ds.WindowCenter) - 0.5, float(ds.WindowWidth) - 1
    expected = 255 - np.rint(np.clip((raw - c) / w + 0.5, 0, 1) * 255)
    assert out.shape == (1955, 1841)
    np.testing.assert_array_equal(out, expected.astype(np.uint8))
    assert (int(out.min()), int(out.max())) == (30, 248)


@pytest.mark.realdata
def test_real_voi_lut_modality_lut_and_jpeg_lossless(realdata_dir: Path) -> None:
    folder = realdata_dir / "dicom"
    voi = dicom_to_uint8(folder / "ot_voi_lut.dcm")  # identity LUT, 16-bit output: the stored bytes
    np.testing.assert_array_equal(voi, pydicom.dcmread(folder / "ot_voi_lut.dcm").pixel_array)
    mod = dicom_to_uint8(folder / "ot_modality_lut_int16.dcm")
    ds = pydicom.dcmread(folder / "ot_modality_lut_int16.dcm")
    assert ds.PixelRepresentation == 1 and "ModalityLUTSequence" in ds
    assert mod.shape == (512, 512) and (int(mod.min()), int(mod.max())) == (0, 255)
    nm = dicom_to_uint8(folder / "nm_jpeg_lossless_16bit.dcm")
    raw = pydicom.dcmread(folder / "nm_jpeg_lossless_16bit.dcm").pixel_array.astype(float)
    expected = np.rint((raw - raw.min()) / (raw.max() - raw.min()) * 255).astype(np.uint8)
    assert nm.shape == (1024, 256)
    np.testing.assert_array_equal(nm, expected)
