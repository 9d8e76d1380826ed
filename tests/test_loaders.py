"""evaluation.loaders: kind detection, ONNX layouts and batch sizes, logits, image reading, clear errors."""
from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from data.images import load_image
from evaluation.loaders import (
    Predictor,
    detect_kind,
    load_predictor,
    looks_like_probabilities,
    onnx_layout,
    softmax,
)

IMG = 32
W = np.array([[2.0, -1.0, 0.5], [0.5, 1.5, -1.0], [-1.0, 0.25, 1.0]], np.float32)


def write_onnx(path: Path, dims: list, *, axes: tuple[int, int], softmax_out: bool = True,
               elem: int | None = None, extra_input: bool = False) -> Path:
    """images -> ReduceMean(axes) -> MatMul(W) (-> Softmax); dims may hold names for dynamic axes."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    elem = TensorProto.FLOAT if elem is None else elem
    nodes = [helper.make_node("Cast", ["images"], ["x"], to=TensorProto.FLOAT),
             helper.make_node("ReduceMean", ["x", "axes"], ["mean"], keepdims=0),
             helper.make_node("MatMul", ["mean", "W"], ["z" if softmax_out else "out"])]
    if softmax_out:
        nodes.append(helper.make_node("Softmax", ["z"], ["out"], axis=1))
    inputs = [helper.make_tensor_value_info("images", elem, dims)]
    if extra_input:
        inputs.append(helper.make_tensor_value_info("other", TensorProto.FLOAT, [1]))
    graph = helper.make_graph(
        nodes,
        "g",
        inputs,
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, [dims[0], 3])],
        initializer=[
            numpy_helper.from_array(np.array(axes, np.int64), "axes"),
            numpy_helper.from_array(W, "W"),
        ],
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=10), str(path))
    return path


def reference(images: np.ndarray, *, apply_softmax: bool = True) -> np.ndarray:
    z = images.astype(np.float64).mean(axis=(1, 2)) @ W.astype(np.float64)
    return softmax(z) if apply_softmax else z


@pytest.fixture(scope="module")
def images() -> np.ndarray:
    rng = np.random.default_rng(0)
    x = rng.random((7, IMG, IMG, 3)).astype(np.float32)
    return x * np.linspace(0.1, 1.0, 7, dtype=np.float32)[:, None, None, None]


@pytest.fixture(scope="module")
def tiny_keras(tmp_path_factory: pytest.TempPathFactory) -> dict:
    import keras

    from models import build_model
    from training.checkpoints import write_weights_hdf5
    from training.export import write_portable_h5

    folder = tmp_path_factory.mktemp("loaders")
    keras.utils.set_random_seed(0)
    model = build_model("smallcnn", input_shape=(IMG, IMG, 3))
    write_portable_h5(model, folder / "full.h5")
    write_weights_hdf5(model, folder / "cp-01-0.10.hdf5")
    model.save(str(folder / "m.keras"))
    # A model whose last layer has no softmax: its outputs are logits.
    inputs = keras.Input((IMG, IMG, 1))
    x = keras.layers.GlobalAveragePooling2D()(keras.layers.Conv2D(4, 3)(inputs))
    logits_model = keras.Model(inputs, keras.layers.Dense(3, name="logits")(x))
    logits_model.save(str(folder / "logits.keras"))
    return {"folder": folder, "model": model, "logits_model": logits_model}


def test_detect_kind_from_name_and_content(tiny_keras: dict, tmp_path: Path) -> None:
    folder = tiny_keras["folder"]
    assert detect_kind(folder / "full.h5") == "keras-h5"
    assert detect_kind(folder / "cp-01-0.10.hdf5") == "keras-weights"
    assert detect_kind(folder / "m.keras") == "keras"
    (tmp_path / "sm").mkdir()
    (tmp_path / "sm" / "saved_model.pb").write_bytes(b"")
    assert detect_kind(tmp_path / "sm") == "savedmodel"
    assert detect_kind(tmp_path / "sm" / "saved_model.pb") == "savedmodel"
    assert detect_kind(write_onnx(tmp_path / "m.ONNX", ["N", 8, 8, 3], axes=(1, 2))) == "onnx"
    with pytest.raises(FileNotFoundError, match="nothing.h5 does not exist"):
        detect_kind(tmp_path / "nothing.h5")


@pytest.mark.parametrize(
    "shape, layout",
    [
        (["N", 224, 224, 3], "NHWC"),
        (["batch", 3, 224, 224], "NCHW"),
        ([1, 1, 512, 512], "NCHW"),
        ([None, "H", "W", 1], "NHWC"),
        ([1, 3, 3, 3], None),
        ([1, 64, 64, 4], None),
        ([1, 64, 64], None),
    ],
)
def test_onnx_layout(shape: list, layout: str | None) -> None:
    if layout is None:
        with pytest.raises(ValueError, match="channel dimension|4-D"):
            onnx_layout(shape)
    else:
        assert onnx_layout(shape) == layout


@pytest.mark.parametrize(
    "name, dims, axes, kwargs",
    [
        ("nhwc_dynamic", ["N", IMG, IMG, 3], (1, 2), {}),
        ("nchw_dynamic", ["N", 3, IMG, IMG], (2, 3), {}),
        ("nchw_batch1", [1, 3, IMG, IMG], (2, 3), {}),
        ("nhwc_batch3_logits", [3, IMG, IMG, 3], (1, 2), {"softmax_out": False}),
    ],
)
def test_onnx_matches_numpy_reference(
    tmp_path: Path, images: np.ndarray, name: str, dims: list, axes: tuple, kwargs: dict
) -> None:
    predictor = load_predictor(write_onnx(tmp_path / f"{name}.onnx", dims, axes=axes, **kwargs))
    assert (predictor.kind, predictor.img_size, predictor.channels, predictor.keras_model) == (
        "onnx",
        IMG,
        3,
        None,
    )
    # 7 images: fixed batch sizes 1 and 3 are fed in chunks, the last one padded.
    probabilities = predictor.predict_batch(images)
    np.testing.assert_allclose(probabilities, reference(images), atol=1e-6)
    assert predictor.output == ("logits" if "logits" in name else "probabilities")
    assert ("NCHW" if "nchw" in name else "NHWC") in predictor.description


def test_onnx_rejections_name_the_file(tmp_path: Path) -> None:
    from onnx import TensorProto

    cases = {
        "int_input": (["N", IMG, IMG, 3], {"elem": TensorProto.UINT8}, "float images"),
        "two_inputs": (["N", IMG, IMG, 3], {"extra_input": True}, "2 inputs"),
        "non_square": (["N", IMG, 2 * IMG, 3], {}, "only square inputs"),
    }
    for name, (dims, kwargs, message) in cases.items():
        path = write_onnx(tmp_path / f"{name}.onnx", dims, axes=(1, 2), **kwargs)
        with pytest.raises(ValueError, match=message) as info:
            load_predictor(path)
        assert str(path) in str(info.value) and "\n" not in str(info.value)


def test_dynamic_size_needs_img_size_and_fixed_size_must_agree(tmp_path: Path) -> None:
    dynamic = write_onnx(tmp_path / "dyn.onnx", ["N", "H", "W", 3], axes=(1, 2))
    with pytest.raises(ValueError, match="give --img_size"):
        load_predictor(dynamic)
    assert load_predictor(dynamic, img_size=48).img_size == 48
    fixed = write_onnx(tmp_path / "fixed.onnx", ["N", IMG, IMG, 3], axes=(1, 2))
    with pytest.raises(ValueError, match=r"--img_size 48 does not match the input size 32"):
        load_predictor(fixed, img_size=48)


def test_probability_detection_and_consistency() -> None:
    assert looks_like_probabilities(np.array([[0.2, 0.3, 0.5], [1.0, 0.0, 0.0]]))
    assert not looks_like_probabilities(np.array([[0.2, 0.3, 0.6]]))
    assert not looks_like_probabilities(np.array([[1.5, -0.5, 0.0]]))
    np.testing.assert_allclose(softmax(np.array([[0.0, 0.0, np.log(2.0)]])), [[0.25, 0.25, 0.5]])

    outputs = iter([np.array([[0.1, 0.2, 0.7]]), np.array([[2.0, 1.0, 0.0]])])
    predictor = Predictor(
        path=Path("m.onnx"), kind="onnx", img_size=4, channels=3, description="", run=lambda x: next(outputs)
    )
    x = np.zeros((1, 4, 4, 3), np.float32)
    np.testing.assert_allclose(predictor.predict_batch(x), [[0.1, 0.2, 0.7]])
    with pytest.raises(ValueError, match="not probabilities for a later one"):
        predictor.predict_batch(x)
    with pytest.raises(ValueError, match=r"images must have shape \[n, 4, 4, 3\]"):
        predictor.predict_batch(np.zeros((1, 5, 5, 3), np.float32))


def test_keras_kinds_and_logits_model(tiny_keras: dict, images: np.ndarray) -> None:
    folder = tiny_keras["folder"]
    expected = tiny_keras["model"].predict(images, verbose=0)
    for name, kwargs in (
        ("full.h5", {}),
        ("m.keras", {}),
        ("cp-01-0.10.hdf5", {"model": "SmallCNN", "img_size": IMG}),
    ):
        predictor = load_predictor(folder / name, **kwargs)
        assert predictor.keras_model is not None and predictor.img_size == IMG
        np.testing.assert_allclose(predictor.predict_batch(images), expected, atol=1e-5)
    logits = load_predictor(folder / "logits.keras")
    gray = images[..., :1]
    np.testing.assert_allclose(
        logits.predict_batch(gray), softmax(tiny_keras["logits_model"].predict(gray, verbose=0)), atol=1e-5
    )
    assert logits.output == "logits" and logits.channels == 1


def test_weights_architecture_from_run_config(tiny_keras: dict, tmp_path: Path) -> None:
    weights = tmp_path / "cp-01-0.10.hdf5"
    weights.write_bytes((tiny_keras["folder"] / "cp-01-0.10.hdf5").read_bytes())
    config = json.loads('{"model": {"name": "smallcnn", "input_shape": [32, 32, 3]}}')
    (tmp_path / "run_config.json").write_text(json.dumps(config))
    # Not a complete run configuration: a one-line error naming it.
    with pytest.raises(ValueError, match=r"run_config.json .* is unusable"):
        load_predictor(weights)
    # --resize does not make the file usable (it also holds the architecture): the advice says so.
    with pytest.raises(ValueError, match=r"is unusable, .*fix the file, or move it away") as raised:
        load_predictor(weights, resize="baseline")
    assert "--resize" not in str(raised.value)
    (tmp_path / "run_config.json").write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        load_predictor(weights)


def _png(path: Path, pixels: np.ndarray) -> Path:
    cv2.imwrite(str(path), pixels)
    return path


def test_load_image_formats_and_dicom_matches_png(tmp_path: Path) -> None:
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    rng = np.random.default_rng(1)
    pixels = rng.integers(0, 256, (50, 40), dtype=np.uint8)
    png = load_image(_png(tmp_path / "a.png", pixels), img_size=IMG, channels=3)
    assert png.shape == (IMG, IMG, 3) and png.dtype == np.float32 and 0.0 <= png.min() and png.max() <= 1.0

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1"
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.Modality, ds.Rows, ds.Columns = "CR", 50, 40
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated = ds.BitsStored = 8
    ds.HighBit, ds.PixelRepresentation = 7, 0
    ds.PixelData = pixels.tobytes()
    ds.save_as(tmp_path / "noext", enforce_file_format=True)  # found by its DICM marker, not its name
    np.testing.assert_array_equal(load_image(tmp_path / "noext", img_size=IMG, channels=3), png)
    gray = load_image(tmp_path / "a.png", img_size=IMG, channels=1)
    assert gray.shape == (IMG, IMG, 1)

    (tmp_path / "text.png").write_text("not an image")
    (tmp_path / "empty.jpg").write_bytes(b"")
    (tmp_path / "broken.png").write_bytes((tmp_path / "a.png").read_bytes()[:40])
    (tmp_path / "bad.dcm").write_bytes(b"\x00" * 200)
    for name, message in (
        ("text.png", "not a PNG, JPEG"),
        ("empty.jpg", "empty file"),
        ("broken.png", "cannot be decoded"),
        ("bad.dcm", "DICOM"),
    ):
        with pytest.raises(ValueError, match=message):
            load_image(tmp_path / name, img_size=IMG, channels=3)
    with pytest.raises(FileNotFoundError):
        load_image(tmp_path / "missing.png", img_size=IMG, channels=3)


def test_keras_model_with_wrong_output_is_refused(tmp_path: Path) -> None:
    import keras

    inputs = keras.Input((8, 8, 3))
    two_classes = keras.Model(inputs, keras.layers.Dense(2)(keras.layers.GlobalAveragePooling2D()(inputs)))
    two_classes.save(str(tmp_path / "two.keras"))
    with pytest.raises(
        ValueError, match=r"two.keras: the model output has shape \[None, 2\]; expected \[n, 3\]"
    ):
        load_predictor(tmp_path / "two.keras")


def test_run_config_beside_a_checkpoint() -> None:
    """Where the recorded resize is looked for: beside a file, and beside a SavedModel folder."""
    from evaluation.preprocessing import run_config_beside

    for checkpoint in ("run/cp-10-0.35.hdf5", "run/final_model.hdf5", "run/saved_model",
                       "run/saved_model/saved_model.pb"):
        assert run_config_beside(checkpoint) == Path("run") / "run_config.json", checkpoint
