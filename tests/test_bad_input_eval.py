"""Bad input to eval_keras.py, predict.py, compare.py: one line, a non-zero exit, nothing written (issue 15).

Every class of bad input gets the exit code and the message text asserted; the inputs that must work
(16-bit and RGBA PNGs, tab/CRLF/BOM/blank-line lists) get their numbers asserted against a reference.
One tiny smallcnn (32 px) saved once per module keeps the whole module within seconds.
"""
from __future__ import annotations

import errno
import json
import re
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest

import compare
import eval_keras
import predict
from common import cli
from data.labels import CLASSES
from evaluation.predictions import PROBABILITY_COLUMNS, REQUIRED_COLUMNS, SUM_TOLERANCE, read_predictions

IMG = 32
N_IMAGES = 6
PREDICTION = re.compile(r"^(?P<image>.+): (normal|pneumonia|COVID-19)  p_normal=")


def _run_config(model_spec: dict, root: Path):
    from training.config import RunConfig

    return RunConfig(
        trainfile="train.txt", testfile="test.txt", data_path=str(root / "data"), val_split=0.1,
        verify_images="header", balance=True, covid_per_batch=1, class_weights=(1.0, 1.0, 25.0), augment=True,
        model=model_spec, weights="none", checkpoint="", lr=1e-3, batch_size=4, epochs=1,
        steps_per_epoch=None, seed=0, mixed_precision=False, xla=False, output=str(root), name="run-",
        run_dir=str(root / "other_run"), keep_checkpoints=0, full_checkpoints=False,
    )


def _onnx_with_external_data(folder: Path) -> tuple[Path, np.ndarray]:
    """Mean colour -> MatMul -> Softmax, its matrix stored in ``model.onnx.data`` beside ``model.onnx``."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    weights = np.array([[3.0, -1.0, 0.5], [-2.0, 2.0, 1.0], [1.0, 0.5, -3.0]], np.float32)
    nodes = [
        helper.make_node("Constant", [], ["axes"], value=numpy_helper.from_array(np.array([1, 2], np.int64))),
        helper.make_node("ReduceMean", ["images", "axes"], ["mean"], keepdims=0),
        helper.make_node("MatMul", ["mean", "W"], ["z"]),
        helper.make_node("Softmax", ["z"], ["probabilities"], axis=1),
    ]
    graph = helper.make_graph(
        nodes, "mean_linear",
        [helper.make_tensor_value_info("images", TensorProto.FLOAT, ["N", IMG, IMG, 3])],
        [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["N", 3])],
        initializer=[numpy_helper.from_array(weights, "W")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=10)
    folder.mkdir(parents=True)
    onnx.save(model, str(folder / "model.onnx"), save_as_external_data=True, all_tensors_to_one_file=True,
              location="model.onnx.data", size_threshold=0)
    return folder / "model.onnx", weights


def _double_it_class():
    import keras

    class DoubleIt(keras.layers.Layer):
        """A layer Keras does not know (not registered): a .keras file using it cannot be rebuilt."""

        def call(self, x):
            return x * 2.0

    return DoubleIt


@pytest.fixture(scope="module")
def zoo(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """A smallcnn saved as every file the cases need, 6 test images, a list and the model's probabilities."""
    import keras

    from data.lists import read_list
    from data.pipeline import image_paths, make_predict_dataset
    from models import ModelSpec, build_model
    from training.checkpoints import write_weights_hdf5
    from training.config import write_run_config
    from training.export import write_portable_h5

    root = tmp_path_factory.mktemp("badinput")
    rng = np.random.default_rng(15)
    keras.utils.set_random_seed(15)
    DoubleIt = _double_it_class()
    model = build_model("smallcnn", num_classes=3, input_shape=(IMG, IMG, 3), weights=None)
    model.set_weights([w + rng.normal(0, 0.05, w.shape).astype(w.dtype) for w in model.get_weights()])
    write_portable_h5(model, root / "full.hdf5")
    model.save(str(root / "model.keras"))
    (root / "bare").mkdir()
    write_weights_hdf5(model, root / "bare" / "cp-01-0.50.hdf5")
    # A run folder whose run_config.json says resnet18, holding smallcnn weights.
    (root / "run").mkdir()
    write_run_config(_run_config(ModelSpec(name="resnet18", input_shape=(IMG, IMG, 3)).to_dict(), root),
                     root / "run")
    write_weights_hdf5(model, root / "run" / "cp-01-0.50.hdf5")
    inputs = keras.Input((IMG, IMG, 3))
    x = keras.layers.Lambda(lambda t: t * 2.0)(inputs)
    x = keras.layers.GlobalAveragePooling2D()(x)
    keras.Model(inputs, keras.layers.Dense(3, activation="softmax")(x)).save(str(root / "lambda.keras"))
    x = keras.layers.GlobalAveragePooling2D()(DoubleIt()(inputs))
    keras.Model(inputs, keras.layers.Dense(3, activation="softmax")(x)).save(str(root / "custom.keras"))
    (root / "x.hdf5").write_text("these are my notes, not a model\n")
    full = (root / "full.hdf5").read_bytes()
    (root / "truncated.hdf5").write_bytes(full[: len(full) // 2])
    (root / "empty.hdf5").write_bytes(b"")
    (root / "empty_saved_model").mkdir()
    (root / "blank_saved_model").mkdir()
    (root / "blank_saved_model" / "saved_model.pb").write_bytes(b"")
    onnx_path, onnx_w = _onnx_with_external_data(root / "onnx_ok")
    (root / "onnx_no_data").mkdir()
    (root / "onnx_no_data" / "model.onnx").write_bytes(onnx_path.read_bytes())  # the .onnx copied alone

    (root / "data" / "test").mkdir(parents=True)
    lines = []
    for i in range(N_IMAGES):
        pixels = np.clip(rng.normal(40 + 30 * i, 30, (36 + 2 * i, 40)), 0, 255).astype(np.uint8)
        cv2.imwrite(str(root / "data" / "test" / f"img{i:02d}.png"), pixels)
        lines.append(f"pat{i // 2} img{i:02d}.png {CLASSES[i % 3]} synthetic\n")
    (root / "test.txt").write_text("".join(lines))
    entries = read_list(root / "test.txt").entries
    paths = image_paths(entries, root / "data" / "test")
    images = np.concatenate([b.numpy() for b in make_predict_dataset(paths, img_size=IMG, batch_size=8)])
    return {
        "root": root,
        "model": model,
        "lines": lines,
        "keras": model.predict(images, verbose=0).astype(np.float64),
        "onnx": onnx_path,
        "onnx_w": onnx_w,
    }


def _one_error(capsys: pytest.CaptureFixture) -> str:
    """The single ``error:`` line of a run (no traceback); returns it."""
    captured = capsys.readouterr()
    errors = [line for line in captured.err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, captured.err
    assert "Traceback" not in captured.err
    return errors[0]


def _eval_args(zoo: dict, checkpoint: Path, out: Path, *extra: str, testfile: Path | None = None,
               data_path: Path | None = None) -> list[str]:
    root = zoo["root"]
    return ["--checkpoint", str(checkpoint), "--testfile", str(testfile or root / "test.txt"),
            "--data_path", str(data_path or root / "data"), "--out", str(out), "--n_bootstrap", "10", *extra]


# -- 1. output folders and the exit codes -------------------------------------------------------------------


def _compare_inputs(folder: Path) -> list[str]:
    frame = pd.DataFrame({"patient_id": ["p0", "p1", "p2"], "filename": ["a.png", "b.png", "c.png"],
                          "label": list(CLASSES), "p_normal": [0.8, 0.1, 0.2], "p_pneumonia": [0.1, 0.7, 0.2],
                          "p_COVID-19": [0.1, 0.2, 0.6]})
    frame.to_csv(folder / "a.csv", index=False)
    frame.assign(p_normal=[0.6, 0.3, 0.2], p_pneumonia=[0.3, 0.5, 0.2]).to_csv(folder / "b.csv", index=False)
    return [str(folder / "a.csv"), str(folder / "b.csv"), "--n-bootstrap", "10"]


@pytest.mark.parametrize("tool", ["eval_keras", "compare"])
@pytest.mark.parametrize("where", ["out is a file", "parent is a file"])
def test_out_that_is_a_file_is_one_line_and_the_file_is_kept(
        zoo: dict, tmp_path: Path, capsys: pytest.CaptureFixture, tool: str, where: str) -> None:
    occupied = tmp_path / "results"
    occupied.write_text("my notes\n")
    out = occupied if where == "out is a file" else occupied / "sub"
    if tool == "eval_keras":
        code = eval_keras.main(_eval_args(zoo, zoo["root"] / "model.keras", out))
    else:
        code = compare.main([*_compare_inputs(tmp_path), "--out", str(out)])
    line = _one_error(capsys)
    assert code == cli.EXIT_USAGE == 2
    if where == "out is a file":
        assert f"--out {out}: exists and is a file, not a folder" in line and "received the file" in line
    else:
        assert f"--out {out}: cannot create the folder, {occupied} is a file" in line
    assert occupied.read_text() == "my notes\n"  # never replaced
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith(".partial-")]


def test_default_out_beside_the_checkpoint_that_is_a_file(zoo: dict, tmp_path: Path,
                                                          capsys: pytest.CaptureFixture) -> None:
    checkpoint = tmp_path / "model.keras"
    checkpoint.write_bytes((zoo["root"] / "model.keras").read_bytes())
    (tmp_path / "model_eval").write_text("not a folder")
    args = [a for a in _eval_args(zoo, checkpoint, Path("x")) if a not in ("--out", "x")]
    assert eval_keras.main(args) == 2
    line = _one_error(capsys)
    assert f"--out (default: beside --checkpoint) {tmp_path / 'model_eval'}: exists and is a file" in line


@pytest.mark.parametrize("raised, code, message", [
    (FileExistsError(errno.EEXIST, "File exists", "out/m.json"), 2, "error: out/m.json: File exists"),
    (NotADirectoryError(errno.ENOTDIR, "Not a directory", "a.csv/x"), 2, "error: a.csv/x: Not a directory"),
    (OSError(errno.EIO, "Input/output error", "img.png"), 1, "error: img.png: Input/output error"),
    (OSError(errno.ENOSPC, "No space left on device"), 1, "error: No space left on device"),
    (ValueError("--x: first line\n  second line"), 2, "error: --x: first line second line"),
])
def test_handle_errors_reports_os_errors_in_one_line(capsys: pytest.CaptureFixture, raised: BaseException,
                                                     code: int, message: str) -> None:
    @cli.handle_errors
    def main(argv=None) -> int:
        raise raised

    assert main([]) == code
    err = capsys.readouterr().err
    assert err == message + "\n"


def test_exit_codes_are_central() -> None:
    from training.preemption import EXIT_PREEMPTED

    assert (cli.EXIT_OK, cli.EXIT_FAILURE, cli.EXIT_USAGE, cli.EXIT_INTERRUPTED) == (0, 1, 2, 130)
    assert cli.EXIT_PREEMPTED == 143 == EXIT_PREEMPTED


# -- 2. checkpoints -----------------------------------------------------------------------------------------

NOT_HDF5 = "is not a readable HDF5 file"
BAD_CHECKPOINTS = {
    # case: (path under the zoo root, extra flags, message fragments)
    "text named .hdf5": (
        "x.hdf5",
        (),
        (f"{NOT_HDF5}: it does not start with the HDF5 signature", "its first bytes are b'these are my not'"),
    ),
    "truncated hdf5": ("truncated.hdf5", (), (f"{NOT_HDF5}: it is truncated,", "copy it again")),
    "0-byte hdf5": ("empty.hdf5", (), (f"{NOT_HDF5}: it is empty (0 bytes)",)),
    "weights of another architecture (--model)": (
        "bare/cp-01-0.50.hdf5",
        ("--model", "resnet18", "--img_size", str(IMG)),
        ("does not fit the model 'resnet18'", "architecture from --model/--img_size/--head/--channels"),
    ),
    "weights of another architecture (run_config.json)": (
        "run/cp-01-0.50.hdf5",
        (),
        ("does not fit the model 'resnet18'", "run_config.json"),
    ),
    "Lambda layer in .keras": (
        "lambda.keras",
        (),
        ("holds a Lambda layer", "it is not loaded, for safety", "would run on this machine"),
    ),
    "custom layer in .keras": ("custom.keras", (), ("it uses 'DoubleIt', which is neither part of Keras",)),
    "empty SavedModel folder": (
        "empty_saved_model",
        (),
        ("is a folder without saved_model.pb", "so not a SavedModel"),
    ),
    "SavedModel with an empty saved_model.pb": (
        "blank_saved_model",
        (),
        ("its saved_model.pb holds no graph",),
    ),
    "onnx without its external data": (
        "onnx_no_data/model.onnx",
        (),
        (
            "keeps its weights in the external data file model.onnx.data, which is missing",
            "copy it beside the .onnx file",
        ),
    ),
}


@pytest.mark.parametrize("tool", ["eval_keras", "predict"])
@pytest.mark.parametrize("case", list(BAD_CHECKPOINTS))
def test_bad_checkpoint_is_one_line(
    zoo: dict, tmp_path: Path, capsys: pytest.CaptureFixture, tool: str, case: str
) -> None:
    name, extra, fragments = BAD_CHECKPOINTS[case]
    checkpoint = zoo["root"] / name
    if tool == "eval_keras":
        code = eval_keras.main(_eval_args(zoo, checkpoint, tmp_path / "out", *extra))
    else:
        image = zoo["root"] / "data" / "test" / "img00.png"
        code = predict.main(["--checkpoint", str(checkpoint), *extra, str(image)])
    captured_line = _one_error(capsys)
    assert code == 2
    assert captured_line.startswith(f"error: checkpoint {checkpoint}")
    for fragment in fragments:
        assert fragment in captured_line, captured_line
    assert not (tmp_path / "out").exists()


def test_the_onnx_model_works_with_its_data_file(zoo: dict, capsys: pytest.CaptureFixture) -> None:
    """The control for the missing-data case: the same .onnx with its data file beside it predicts."""
    from data.images import load_image

    image = zoo["root"] / "data" / "test" / "img03.png"
    assert predict.main(["--checkpoint", str(zoo["onnx"]), "--json", str(image)]) == 0
    (result,) = json.loads(capsys.readouterr().out)["results"]
    z = load_image(image, img_size=IMG, channels=3).astype(np.float64).mean(axis=(0, 1)) @ zoo["onnx_w"]
    expected = np.exp(z - z.max()) / np.exp(z - z.max()).sum()
    np.testing.assert_allclose([result["probabilities"][c] for c in CLASSES], expected, atol=1e-6)


# -- 3. predict.py images -----------------------------------------------------------------------------------


def _write_bad_image(folder: Path, case: str, good: Path) -> Path:
    if case == "pdf":
        path = folder / "report.pdf"
        path.write_bytes(b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n1 0 obj\n<< /Type /Catalog >>\nendobj\n")
    elif case == "pdf named .png":
        path = folder / "xray.png"
        path.write_bytes(b"%PDF-1.4\n1 0 obj\n<< >>\nendobj\n")
    elif case == "1x1":
        path = folder / "dot.png"
        cv2.imwrite(str(path), np.full((1, 1), 128, np.uint8))
    elif case == "1x5000":
        path = folder / "strip.png"
        cv2.imwrite(str(path), np.full((1, 5000), 128, np.uint8))
    elif case == "0 bytes":
        path = folder / "empty.png"
        path.write_bytes(b"")
    else:  # truncated PNG: the first half of a real one
        path = folder / "truncated.png"
        data = good.read_bytes()
        path.write_bytes(data[: len(data) // 2])
    return path


BAD_IMAGES = {
    "pdf": "a PDF document, not an image (it starts with %PDF-)",
    "pdf named .png": "a PDF document, not an image (it starts with %PDF-)",
    "1x1": (
        "image is 1x1 px (width x height): cannot be a chest radiograph (allowed: shorter side at least "
        "32 px and aspect ratio at most 1:4"
    ),
    "1x5000": "image is 5000x1 px (width x height): cannot be a chest radiograph",
    "0 bytes": "empty file (0 bytes)",
    "truncated png": "cannot be decoded (Invalid PNG data, size ",
}


@pytest.mark.parametrize("case", list(BAD_IMAGES))
def test_bad_image_gets_its_error_line_and_the_others_are_predicted(
    zoo: dict, tmp_path: Path, capsys: pytest.CaptureFixture, case: str
) -> None:
    good = zoo["root"] / "data" / "test" / "img01.png"
    bad = _write_bad_image(tmp_path, case, good)
    assert predict.main(["--checkpoint", str(zoo["root"] / "model.keras"), str(bad), str(good)]) == 2
    captured = capsys.readouterr()
    errors = [line for line in captured.err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and errors[0].startswith(f"error: {bad}: "), errors
    assert BAD_IMAGES[case] in errors[0], errors
    assert "Traceback" not in captured.err and "function_node" not in captured.err
    predicted = [m["image"] for m in map(PREDICTION.match, captured.out.splitlines()) if m]
    assert predicted == [str(good)]


def test_radiograph_shape_rule_and_its_boundaries() -> None:
    from data.images import MAX_ASPECT, MIN_SIDE, WARN_ASPECT, WARN_MIN_SIDE, check_radiograph_shape

    assert (MIN_SIDE, MAX_ASPECT, WARN_MIN_SIDE, WARN_ASPECT) == (32, 4.0, 128, 2.0)
    for height, width in ((256, 256), (2048, 2500), (1200, 2300), (128, 256)):
        assert check_radiograph_shape(height, width) is None, (height, width)
    for height, width, fragment in (
        (127, 127, "below 128 px"),
        (300, 700, "aspect ratio 1:2.33"),
        (32, 128, ("shorter side below 128 px, smaller than public chest X-rays; aspect ratio 1:4, beyond")),
    ):
        assert fragment in check_radiograph_shape(height, width), (height, width)
    for height, width in ((31, 400), (64, 257), (1, 1), (1, 5000), (0, 10)):
        with pytest.raises(ValueError, match="cannot be a chest radiograph"):
            check_radiograph_shape(height, width)


def test_odd_size_is_predicted_with_a_warning(
    zoo: dict, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    wide = tmp_path / "wide.png"
    cv2.imwrite(str(wide), np.random.default_rng(4).integers(0, 256, (140, 350), dtype=np.uint8))
    assert predict.main(["--checkpoint", str(zoo["root"] / "model.keras"), "--json", str(wide)]) == 0
    captured = capsys.readouterr()
    (result,) = json.loads(captured.out)["results"]
    assert result["warnings"] == [
        (
            "image is 350x140 px (width x height) (aspect ratio 1:2.5, beyond the 1:2 of public chest "
            "X-rays); "
            "predicted anyway, check that it is a chest radiograph"
        )
    ]
    assert captured.err.count(f"warning: {wide}: image is 350x140 px") == 1 and "error:" not in captured.err
    assert sum(result["probabilities"].values()) == pytest.approx(1.0, abs=1e-6)


def test_help_states_the_size_rule(capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit):
        predict.parse_args(["--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "shorter side is below 32 px or whose aspect ratio (long side / short side) is beyond 1:4" in text
    assert "below 128 px or whose aspect ratio is beyond 1:2" in text and "refused" in text
    assert "32 px" in predict.__doc__ and "1:4" in predict.__doc__


@pytest.fixture(scope="module")
def colour_images(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A 16-bit gray PNG and its 8-bit version as cv2.imread makes it; an RGBA PNG and its RGB part."""
    folder = tmp_path_factory.mktemp("colour")
    rng = np.random.default_rng(16)
    gray16 = rng.integers(0, 65536, (48, 40), dtype=np.uint16)
    cv2.imwrite(str(folder / "gray16.png"), gray16)
    assert cv2.imread(str(folder / "gray16.png"), cv2.IMREAD_UNCHANGED).dtype == np.uint16  # really 16 bit
    gray8 = cv2.imread(str(folder / "gray16.png"), cv2.IMREAD_GRAYSCALE)  # what create_covidx/SURFsara read
    np.testing.assert_array_equal(gray8, (gray16 >> 8).astype(np.uint8))
    cv2.imwrite(str(folder / "gray8.png"), gray8)
    bgr = rng.integers(0, 256, (48, 40, 3), dtype=np.uint8)
    alpha = rng.integers(0, 256, (48, 40), dtype=np.uint8)
    cv2.imwrite(str(folder / "rgba.png"), np.dstack([bgr, alpha]))
    assert cv2.imread(str(folder / "rgba.png"), cv2.IMREAD_UNCHANGED).shape == (48, 40, 4)
    cv2.imwrite(str(folder / "rgb.png"), bgr)
    return {name: folder / f"{name}.png" for name in ("gray16", "gray8", "rgba", "rgb")}


def test_16_bit_and_rgba_pngs_predict_like_their_8_bit_and_rgb_versions(
    zoo: dict, colour_images: dict[str, Path], capsys: pytest.CaptureFixture
) -> None:
    paths = [str(colour_images[n]) for n in ("gray16", "gray8", "rgba", "rgb")]
    assert predict.main(["--checkpoint", str(zoo["root"] / "model.keras"), "--json", *paths]) == 0
    results = {
        Path(r["image"]).stem: np.array([r["probabilities"][c] for c in CLASSES])
        for r in json.loads(capsys.readouterr().out)["results"]
    }
    # The decoded pixels are identical (16 bit -> high byte; alpha dropped), so equal to float precision.
    np.testing.assert_allclose(results["gray16"], results["gray8"], rtol=0, atol=1e-6)
    np.testing.assert_allclose(results["rgba"], results["rgb"], rtol=0, atol=1e-6)
    assert np.abs(results["gray8"] - results["rgb"]).max() > 1e-4  # different images, different outputs


@pytest.mark.parametrize("name", ["gray16", "rgba", "rgb"])
def test_read_image_is_the_evaluation_preprocessing(colour_images: dict[str, Path], name: str) -> None:
    """predict.py's decoding (data.images.read_image) is the pipeline's and the SavedModel's, bit for bit."""
    import tensorflow as tf

    from data.images import read_image, read_resize
    from training.export import decode_for_serving

    path = colour_images[name]
    loaded = read_image(path, img_size=IMG, channels=3)
    assert (loaded.height, loaded.width) == (48, 40)
    np.testing.assert_array_equal(loaded.pixels, read_resize(tf.constant(str(path)), img_size=IMG).numpy())
    served = decode_for_serving(tf.constant(path.read_bytes()), img_size=IMG, channels=3).numpy()
    np.testing.assert_array_equal(loaded.pixels, served)


@pytest.mark.realdata
def test_no_real_chest_xray_is_refused_or_warned(realdata_dir: Path) -> None:
    from PIL import Image

    from data.images import check_radiograph_shape

    sizes = {}
    for path in sorted(realdata_dir.rglob("*")):
        if path.suffix.lower() in (".png", ".jpg", ".jpeg"):
            with Image.open(path) as im:
                sizes[path.name] = im.size
    assert len(sizes) >= 100
    warned = {name: check_radiograph_shape(h, w) for name, (w, h) in sizes.items()}
    assert [name for name, warning in warned.items() if warning] == []


# -- 4. compare.py prediction files -------------------------------------------------------------------------

HEADER = ",".join(REQUIRED_COLUMNS)


def _rows(n: int = 6, start: int = 0) -> list[str]:
    rows = []
    for i in range(start, start + n):
        p = [0.1, 0.2, 0.7] if i % 3 == 2 else [0.6, 0.3, 0.1]
        rows.append(f"pat{i},img{i:03d}.png,{CLASSES[i % 3]},{p[0]},{p[1]},{p[2]}")
    return rows


def _with(rows: list[str], line: int, column: str, value: str) -> list[str]:
    """``rows`` with one cell changed; ``line`` counts the header as line 1."""
    rows = list(rows)
    cells = rows[line - 2].split(",")
    cells[REQUIRED_COLUMNS.index(column)] = value
    rows[line - 2] = ",".join(cells)
    return rows


BAD_PREDICTIONS = {
    "different image sets": (
        HEADER + "\n" + "\n".join(_rows(3) + _rows(2, start=10)) + "\n",
        (
            "cover different images: 3 only in",
            "(img003.png, img004.png, img005.png)",
            "2 only in",
            "(img010.png, img011.png)",
        ),
    ),
    "NaN probability": (
        HEADER + "\n" + "\n".join(_with(_rows(), 4, "p_pneumonia", "nan")) + "\n",
        ("p_pneumonia is NaN or infinite on 1 rows: line 4",),
    ),
    "row not summing to 1": (
        HEADER + "\n" + "\n".join(_with(_rows(), 3, "p_normal", "0.65")) + "\n",
        ("probabilities do not sum to 1 (tolerance 0.001) on 1 rows: line 3", "(sum 1.05)"),
    ),
    "duplicate row": (
        HEADER + "\n" + "\n".join(_rows() + [_rows()[1]]) + "\n",
        ("1 duplicate file names: img001.png (line 3, line 8)",),
    ),
    "empty file": ("", ("cannot be read as CSV: it is empty (0 bytes)", HEADER)),
    "header only": (HEADER + "\n", ("no rows (only a header)",)),
    "missing columns": (
        HEADER.replace(",p_pneumonia", "")
        + "\n"
        + "\n".join(",".join(r.split(",")[:4] + r.split(",")[5:]) for r in _rows())
        + "\n",
        ("missing column(s) p_pneumonia in the header (line 1)",),
    ),
}


@pytest.mark.parametrize("case", list(BAD_PREDICTIONS))
def test_bad_predictions_file_is_one_line_naming_file_row_and_problem(
    tmp_path: Path, capsys: pytest.CaptureFixture, case: str
) -> None:
    text, fragments = BAD_PREDICTIONS[case]
    good = tmp_path / "good.csv"
    good.write_text(HEADER + "\n" + "\n".join(_rows()) + "\n")
    bad = tmp_path / "bad.csv"
    bad.write_text(text)
    code = compare.main([str(good), str(bad), "--out", str(tmp_path / "out"), "--n-bootstrap", "10"])
    line = _one_error(capsys)
    assert code == 2
    assert str(bad) in line, line
    for fragment in fragments:
        assert fragment in line, line
    assert not (tmp_path / "out").exists()


def test_sum_tolerance_is_stated_and_applied(tmp_path: Path) -> None:
    assert SUM_TOLERANCE == 1e-3
    path = tmp_path / "p.csv"
    path.write_text(HEADER + "\n" + "\n".join(_with(_rows(), 2, "p_normal", "0.6009")) + "\n")
    assert read_predictions(path).probabilities[0].sum() == pytest.approx(1.0009)  # within 1e-3: accepted
    path.write_text(HEADER + "\n" + "\n".join(_with(_rows(), 2, "p_normal", "0.6011")) + "\n")
    with pytest.raises(ValueError, match=r"on 1 rows: line 2 \(sum 1.0011\)"):
        read_predictions(path)


# -- 5. eval_keras.py list files and images ------------------------------------------------------------------

LIST_QUIRKS = {  # in an order that can be applied one after the other (the BOM last: it opens the file)
    "tabs": lambda lines: [line.replace(" ", "\t") for line in lines],
    "CRLF": lambda lines: [line.replace("\n", "\r\n") for line in lines],
    "blank lines": lambda lines: ["\n", lines[0], "\n  \n", *lines[1:], "\n"],
    "BOM": lambda lines: ["\ufeff" + lines[0], *lines[1:]],
}


@pytest.mark.parametrize("quirk", list(LIST_QUIRKS))
def test_list_quirks_are_read_as_the_clean_list(zoo: dict, tmp_path: Path, quirk: str) -> None:
    from data.pipeline import load_entries

    listfile = tmp_path / "list.txt"
    listfile.write_bytes("".join(LIST_QUIRKS[quirk](zoo["lines"])).encode("utf-8"))
    clean = load_entries(zoo["root"] / "test.txt", zoo["root"] / "data" / "test", what="--testfile")
    assert load_entries(listfile, zoo["root"] / "data" / "test", what="--testfile") == clean
    assert clean[0].patient_id == "pat0" and len(clean) == N_IMAGES


def test_eval_with_every_list_quirk_at_once(zoo: dict, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    lines = zoo["lines"]
    for quirk in LIST_QUIRKS.values():
        lines = quirk(lines)
    listfile = tmp_path / "quirky.txt"
    listfile.write_bytes("".join(lines).encode("utf-8"))
    args = _eval_args(zoo, zoo["root"] / "model.keras", tmp_path / "out", testfile=listfile)
    assert eval_keras.main(args) == 0
    frame = pd.read_csv(tmp_path / "out" / "predictions.csv", dtype={"patient_id": str})
    assert frame["filename"].tolist() == [f"img{i:02d}.png" for i in range(N_IMAGES)]
    assert frame["patient_id"].tolist()[:2] == ["synthetic:pat0", "synthetic:pat0"]  # no BOM in the id
    np.testing.assert_allclose(frame[list(PROBABILITY_COLUMNS)].to_numpy(), zoo["keras"], atol=1e-5)
    assert json.loads((tmp_path / "out" / "metrics.json").read_text())["n_patients"] == 3
    capsys.readouterr()


BAD_LISTS = {
    "2 fields": (
        lambda lines: [lines[0], "pat9 img09.png\n", *lines[1:]],
        "has 1 bad lines: line 2: expected at least 3 fields (patientid filename label), found 2",
    ),
    "unknown label": (
        lambda lines: [*lines[:2], "pat9 img01.png covid\n", *lines[2:]],
        (
            "has 1 bad lines: line 3: no known label in fields 3 and after ('covid'); allowed "
            "labels are normal, pneumonia, COVID-19"
        ),
    ),
    "image missing": (
        lambda lines: [*lines, "pat9 gone.png normal synthetic\n"],
        "1 of 7 images are missing or unreadable: {images}/gone.png: file does not exist",
    ),
}


@pytest.mark.parametrize("case", list(BAD_LISTS))
def test_bad_list_is_one_line_with_the_line_number(
    zoo: dict, tmp_path: Path, capsys: pytest.CaptureFixture, case: str
) -> None:
    edit, message = BAD_LISTS[case]
    listfile = tmp_path / "list.txt"
    listfile.write_text("".join(edit(zoo["lines"])))
    code = eval_keras.main(_eval_args(zoo, zoo["root"] / "model.keras", tmp_path / "out", testfile=listfile))
    line = _one_error(capsys)
    assert code == 2
    assert f"--testfile {listfile}" in line
    assert message.format(images=zoo["root"] / "data" / "test") in line, line
    assert not (tmp_path / "out").exists()


def _damage(data: bytes, damage: str) -> bytes:
    if damage == "0 bytes":
        return b""
    if damage == "truncated":
        return data[: len(data) // 2]
    corrupt = bytearray(data)  # zeros inside the IDAT chunk: the end marker is intact, the data is not
    corrupt[60:90] = bytes(30)
    return bytes(corrupt)


@pytest.mark.parametrize(
    "damage, message",
    [
        ("0 bytes", "img03.png: empty file"),
        ("truncated", "img03.png: truncated PNG (no IEND chunk at its end)"),
        ("corrupt inside", "img03.png: cannot be decoded (Invalid PNG data"),
    ],
)
def test_damaged_image_in_the_list_is_named(
    zoo: dict, tmp_path: Path, capsys: pytest.CaptureFixture, damage: str, message: str
) -> None:
    images = tmp_path / "data" / "test"
    images.mkdir(parents=True)
    for path in (zoo["root"] / "data" / "test").glob("*.png"):
        data = path.read_bytes()
        (images / path.name).write_bytes(_damage(data, damage) if path.name == "img03.png" else data)
    code = eval_keras.main(
        _eval_args(zoo, zoo["root"] / "model.keras", tmp_path / "out", data_path=tmp_path / "data")
    )
    line = _one_error(capsys)
    assert code == 2
    assert f"{images}/{message}" in line and "function_node" not in line, line
    if damage == "corrupt inside":  # passes the header check: found by the decode, then named
        assert "could not be read or decoded (Invalid PNG data" in line and "1 of" not in line
    else:  # found by the header check before the model is loaded
        assert f"1 of {N_IMAGES} images are missing or unreadable" in line
    assert not (tmp_path / "out").exists()
