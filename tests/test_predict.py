"""predict.py: PNG, JPEG and DICOM in, three probabilities and the disclaimer out; bad images reported."""
from __future__ import annotations

import json
import re
from pathlib import Path

import cv2
import numpy as np
import pytest

import predict
from common.disclaimer import DISCLAIMER
from data.labels import CLASSES

IMG = 32
LINE = re.compile(r"^(?P<image>.+): (?P<cls>normal|pneumonia|COVID-19)  p_normal=(?P<p0>[\d.]+)  "
                  r"p_pneumonia=(?P<p1>[\d.]+)  p_COVID-19=(?P<p2>[\d.]+)$")


def write_dicom(path: Path, pixels: np.ndarray) -> Path:
    """MONOCHROME2, 8-bit, uncompressed (explicit VR little endian)."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1"  # computed radiography
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.Modality = "CR"
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated = ds.BitsStored = 8
    ds.HighBit, ds.PixelRepresentation = 7, 0
    ds.PixelData = pixels.tobytes()
    ds.save_as(path, enforce_file_format=True)
    return path


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> dict:
    import keras

    from data.images import load_image
    from models import build_model

    folder = tmp_path_factory.mktemp("predict")
    keras.utils.set_random_seed(5)
    model = build_model("smallcnn", input_shape=(IMG, IMG, 3))
    rng = np.random.default_rng(2)
    model.set_weights([w + rng.normal(0, 0.05, w.shape).astype(w.dtype) for w in model.get_weights()])
    model.save(str(folder / "model.keras"))
    pixels = np.clip(rng.normal(100, 40, (48, 40)), 0, 255).astype(np.uint8)
    pixels[5:20, 5:15] = 230  # some structure, so JPEG and PNG decode differently
    paths = {
        "png": folder / "xray.png",
        "jpeg": folder / "xray.jpg",
        "dicom": write_dicom(folder / "xray.dcm", pixels),
    }
    cv2.imwrite(str(paths["png"]), pixels)
    cv2.imwrite(str(paths["jpeg"]), pixels, [cv2.IMWRITE_JPEG_QUALITY, 60])
    expected = {
        kind: model.predict(load_image(p, img_size=IMG, channels=3)[None], verbose=0)[0].astype(np.float64)
        for kind, p in paths.items()
    }
    return {"folder": folder, "model": folder / "model.keras", "paths": paths, "expected": expected}


def test_text_output_for_png_jpeg_and_dicom(setup: dict, capsys: pytest.CaptureFixture) -> None:
    paths = setup["paths"]
    assert predict.main(["--checkpoint", str(setup["model"]), *map(str, paths.values())]) == 0
    out = capsys.readouterr().out
    lines = [line for line in out.splitlines() if LINE.match(line)]
    assert [LINE.match(line)["image"] for line in lines] == [str(p) for p in paths.values()]
    for line, kind in zip(lines, paths):
        match = LINE.match(line)
        probs = np.array([float(match[f"p{k}"]) for k in range(3)])
        assert abs(probs.sum() - 1.0) <= 2e-4  # printed with 4 decimals
        np.testing.assert_allclose(probs, setup["expected"][kind], atol=6e-5)
        assert match["cls"] == CLASSES[int(np.argmax(setup["expected"][kind]))]
    assert out.rstrip().endswith(DISCLAIMER)


def test_json_output_and_dicom_equals_png(setup: dict, capsys: pytest.CaptureFixture) -> None:
    paths = setup["paths"]
    assert predict.main(["--checkpoint", str(setup["model"]), "--json", *map(str, paths.values())]) == 0
    document = json.loads(capsys.readouterr().out)
    assert document["classes"] == list(CLASSES) and document["disclaimer"] == DISCLAIMER
    results = {Path(r["image"]).suffix: r for r in document["results"]}
    for kind, suffix in (("png", ".png"), ("jpeg", ".jpg"), ("dicom", ".dcm")):
        probs = np.array([results[suffix]["probabilities"][c] for c in CLASSES])
        assert probs.sum() == pytest.approx(1.0, abs=1e-6)
        np.testing.assert_allclose(probs, setup["expected"][kind], atol=1e-5)
    # The DICOM holds the PNG's pixels: same conversion as create_covidx.py, same prediction.
    np.testing.assert_allclose(setup["expected"]["dicom"], setup["expected"]["png"], atol=1e-7)
    assert np.abs(setup["expected"]["jpeg"] - setup["expected"]["png"]).max() > 0  # JPEG really decoded


def test_bad_images_are_reported_and_the_rest_predicted(setup: dict, tmp_path: Path,
                                                        capsys: pytest.CaptureFixture) -> None:
    notes = tmp_path / "notes.png"
    notes.write_text("this is text")
    broken = tmp_path / "broken.dcm"
    broken.write_bytes(setup["paths"]["dicom"].read_bytes()[:300])
    missing = tmp_path / "missing.jpg"
    args = [
        "--checkpoint",
        str(setup["model"]),
        str(notes),
        str(setup["paths"]["png"]),
        str(broken),
        str(missing),
    ]
    assert predict.main(args) == 2
    captured = capsys.readouterr()
    errors = [line for line in captured.err.splitlines() if line.startswith("error:")]
    assert len(errors) == 3 and "Traceback" not in captured.err
    for path, reason in ((notes, "not a PNG, JPEG"), (broken, "DICOM"), (missing, "does not exist")):
        assert any(line.startswith(f"error: {path}: ") and reason in line for line in errors), errors
    good = [line for line in captured.out.splitlines() if LINE.match(line)]
    assert [LINE.match(line)["image"] for line in good] == [str(setup["paths"]["png"])]
    assert captured.out.rstrip().endswith(DISCLAIMER)

    assert predict.main(["--json", *args]) == 2
    document = json.loads(capsys.readouterr().out)
    assert [("error" in r) for r in document["results"]] == [True, False, True, True]


@pytest.mark.parametrize(
    "content, message",
    [(b"\x89HDF\r\n\x1a\n" + b"\x00" * 100, "not a readable HDF5 file"), (None, "does not exist")],
)
def test_bad_checkpoint_exits_2_with_one_line(
    setup: dict, tmp_path: Path, capsys: pytest.CaptureFixture, content: bytes | None, message: str
) -> None:
    checkpoint = tmp_path / "model.hdf5"
    if content is not None:
        checkpoint.write_bytes(content)
    assert predict.main(["--checkpoint", str(checkpoint), str(setup["paths"]["png"])]) == 2
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and str(checkpoint) in errors[0] and message in errors[0]


@pytest.mark.realdata
def test_real_compressed_dicom(setup: dict, realdata_dir: Path, capsys: pytest.CaptureFixture) -> None:
    dicom = realdata_dir / "dicom" / "rsna_cr_chest_mono2_jpeg_baseline.dcm"
    assert predict.main(["--checkpoint", str(setup["model"]), "--json", str(dicom)]) == 0
    (result,) = json.loads(capsys.readouterr().out)["results"]
    assert sum(result["probabilities"].values()) == pytest.approx(1.0, abs=1e-6)


def test_exif_rotated_jpeg_is_predicted_upright(tmp_path: Path) -> None:
    from PIL import Image

    from data.images import load_image

    pixels = np.full((40, 20), 30, np.uint8)
    pixels[:10, :10] = 230
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(pixels).save(tmp_path / "r.jpg", format="JPEG", quality=95, exif=exif.tobytes())
    image = load_image(tmp_path / "r.jpg", img_size=40, channels=1)[..., 0]
    # Rotated 90 degrees clockwise: the bright corner is top right, as cv2.imread shows it.
    assert image[:5, 30:].mean() > 0.8 and image[:5, :10].mean() < 0.3


def test_resize_torchvision_feeds_pillows_pixels(
    setup: dict, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    """--resize torchvision: the model gets Pillow's Image.resize((S, S), BILINEAR) / 255, bit for bit."""
    from PIL import Image

    rng = np.random.default_rng(11)
    colour = np.clip(rng.normal(120, 50, (97, 83, 3)), 0, 255).astype(np.uint8)  # 83x97 px, odd scale
    colour[10:40, 20:50] = (240, 30, 90)
    path = tmp_path / "colour.png"
    Image.fromarray(colour).save(path)
    fed: list[np.ndarray] = []
    real = predict.predict_pixels

    def spy(predict_batch, pixels, *, batch_size):
        fed.extend(pixels.values())
        return real(predict_batch, pixels, batch_size=batch_size)

    monkeypatch.setattr(predict, "predict_pixels", spy)
    pillow = np.asarray(Image.fromarray(colour).resize((IMG, IMG), Image.BILINEAR), np.float32) / 255.0
    for resize in ("torchvision", "baseline"):
        fed.clear()
        argv = ["--checkpoint", str(setup["model"]), "--json", "--resize", resize, str(path)]
        assert predict.main(argv) == 0
        document = json.loads(capsys.readouterr().out)
        assert document["preprocessing"] == {"resize": resize, "source": "--resize"}
        (pixels,) = fed
        assert pixels.shape == (IMG, IMG, 3) and pixels.dtype == np.float32
        if resize == "torchvision":
            np.testing.assert_array_equal(pixels, pillow)
        else:  # cv2.resize's pixels: not antialiased, so not Pillow's
            assert np.abs(pixels - pillow).max() > 10 / 255


def test_json_says_the_default_resize(setup: dict, capsys: pytest.CaptureFixture) -> None:
    """Without --resize or a run_config.json beside the model, the baseline's resize, and the JSON says so."""
    assert predict.main(["--checkpoint", str(setup["model"]), "--json", str(setup["paths"]["png"])]) == 0
    document = json.loads(capsys.readouterr().out)
    assert document["preprocessing"] == {
        "resize": "baseline", "source": "default: nothing recorded for this checkpoint"
    }
