"""eval_keras.py end to end: every checkpoint kind gives the in-memory model's probabilities; bad input."""
from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest

import eval_keras
from data.labels import CLASSES
from evaluation.predictions import PROBABILITY_COLUMNS

IMG = 32
# A fixed linear read-out of the mean image colour, for the hand-built ONNX models.
ONNX_W = np.array([[4.0, -2.0, 0.5], [1.0, 3.0, -1.0], [-2.0, 0.5, 2.0]], np.float32)
ONNX_B = np.array([0.3, -0.2, 0.1], np.float32)


def write_images(root: Path, rng: np.random.Generator) -> None:
    """12 PNGs of 32-40 px (4 per class, brightness varying by image) and test.txt."""
    (root / "data" / "test").mkdir(parents=True)
    lines = []
    for i in range(12):
        label = CLASSES[i % 3]
        h, w = 32 + (i % 3) * 4, 40 - (i % 2) * 6
        image = np.clip(rng.normal(20 + 19 * i, 25, (h, w)), 0, 255).astype(np.uint8)
        name = f"img{i:02d}.png"
        cv2.imwrite(str(root / "data" / "test" / name), image)
        lines.append(f"pat{i // 2} {name} {label} synthetic\n")
    (root / "test.txt").write_text("".join(lines))


def write_onnx(path: Path, *, layout: str, batch: int | None, size: int | None, softmax: bool) -> Path:
    """Mean over H, W -> MatMul -> Add (-> Softmax): a 3-class model with a numpy reference."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    n, s = (batch or "N"), (size or "S")
    dims = [n, s, s, 3] if layout == "NHWC" else [n, 3, s, s]
    axes = [1, 2] if layout == "NHWC" else [2, 3]
    out = "probabilities" if softmax else "logits"
    nodes = [
        helper.make_node("ReduceMean", ["images", "axes"], ["mean"], keepdims=0),
        helper.make_node("MatMul", ["mean", "W"], ["z"]),
        helper.make_node("Add", ["z", "B"], ["logits" if softmax else out]),
    ]
    if softmax:
        nodes.append(helper.make_node("Softmax", ["logits"], [out], axis=1))
    graph = helper.make_graph(
        nodes, "mean_linear",
        [helper.make_tensor_value_info("images", TensorProto.FLOAT, dims)],
        [helper.make_tensor_value_info(out, TensorProto.FLOAT, [n, 3])],
        initializer=[numpy_helper.from_array(np.array(axes, np.int64), "axes"),
                     numpy_helper.from_array(ONNX_W, "W"), numpy_helper.from_array(ONNX_B, "B")],
    )
    # IR version 10 (onnx 1.16) as torch.onnx.export writes; the installed onnxruntime reads up to 13.
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=10)
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def onnx_reference(images: np.ndarray) -> np.ndarray:
    z = images.astype(np.float64).mean(axis=(1, 2)) @ ONNX_W.astype(np.float64) + ONNX_B
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def pillow_resized(paths: list[str]) -> np.ndarray:
    """Pillow's ``Image.resize((IMG, IMG), BILINEAR) / 255`` of each RGB image, float32 NHWC."""
    from PIL import Image

    def one(path: str) -> np.ndarray:
        with Image.open(path) as image:
            return np.asarray(image.convert("RGB").resize((IMG, IMG), Image.BILINEAR), np.float32) / 255.0

    return np.stack([one(p) for p in paths])


def run_config(model_spec: dict, root: Path):
    from training.config import RunConfig

    return RunConfig(
        trainfile="train.txt",
        testfile="test.txt",
        data_path=str(root / "data"),
        val_split=0.1,
        verify_images="header",
        balance=True,
        covid_per_batch=1,
        class_weights=(1.0, 1.0, 25.0),
        augment=True,
        model=model_spec,
        weights="none",
        checkpoint="",
        lr=1e-3,
        batch_size=4,
        epochs=1,
        steps_per_epoch=None,
        seed=0,
        mixed_precision=False,
        xla=False,
        output=str(root),
        name="run-",
        run_dir=str(root / "run"),
        keep_checkpoints=0,
        full_checkpoints=False,
    )


@pytest.fixture(scope="module")
def zoo(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """One smallcnn with non-trivial weights saved as every kind, the test images and their expected outputs.
    """
    import keras

    from data.lists import read_list
    from data.pipeline import image_paths, make_predict_dataset
    from models import ModelSpec, build_model_from_spec
    from training.checkpoints import write_weights_hdf5
    from training.config import write_run_config
    from training.export import export_saved_model, write_portable_h5

    root = tmp_path_factory.mktemp("evalzoo")
    rng = np.random.default_rng(0)
    write_images(root, rng)
    keras.utils.set_random_seed(3)
    spec = ModelSpec(name="smallcnn", input_shape=(IMG, IMG, 3))
    model = build_model_from_spec(spec, weights=None)
    model.set_weights([w + rng.normal(0, 0.05, w.shape).astype(w.dtype) for w in model.get_weights()])

    write_portable_h5(model, root / "full.hdf5")
    (root / "run").mkdir()
    write_run_config(run_config(spec.to_dict(), root), root / "run")
    write_weights_hdf5(model, root / "run" / "cp-01-0.50.hdf5")
    model.save_weights(str(root / "run" / "final.weights.h5"))
    (root / "bare").mkdir()
    write_weights_hdf5(model, root / "bare" / "cp-01-0.50.hdf5")
    model.save(str(root / "model.keras"))
    export_saved_model(model, root / "saved_model")
    write_onnx(root / "nhwc_dynamic.onnx", layout="NHWC", batch=None, size=None, softmax=True)
    write_onnx(root / "nchw_batch1_logits.onnx", layout="NCHW", batch=1, size=IMG, softmax=False)

    entries = read_list(root / "test.txt").entries
    paths = image_paths(entries, root / "data" / "test")
    images = np.concatenate([b.numpy() for b in make_predict_dataset(paths, img_size=IMG, batch_size=5)])
    return {
        "root": root,
        "images": images,
        "keras": model.predict(images, verbose=0).astype(np.float64),
        # torchvision.transforms.Resize((IMG, IMG)) + ToTensor() on the PIL images, done by Pillow itself
        "keras_torchvision": model.predict(pillow_resized(paths), verbose=0).astype(np.float64),
        "onnx": onnx_reference(images),
        "filenames": [e.filename for e in entries],
    }


def _args(zoo: dict, checkpoint: Path | str, out: Path, *extra: str) -> list[str]:
    root = zoo["root"]
    return [
        "--checkpoint",
        str(checkpoint),
        "--testfile",
        str(root / "test.txt"),
        "--data_path",
        str(root / "data"),
        "--out",
        str(out),
        "--n_bootstrap",
        "20",
        "--batch_size",
        "5",
        *extra,
    ]


KINDS = {
    "keras-h5": ("full.hdf5", (), "keras"),
    "keras-weights+run_config": ("run/cp-01-0.50.hdf5", (), "keras"),
    "keras3-weights+run_config": ("run/final.weights.h5", (), "keras"),
    "keras-weights+flags": ("bare/cp-01-0.50.hdf5", ("--model", "smallcnn", "--img_size", "32"), "keras"),
    "keras": ("model.keras", (), "keras"),
    "savedmodel": ("saved_model", (), "keras"),
    "onnx-nhwc-dynamic": ("nhwc_dynamic.onnx", ("--img_size", "32"), "onnx"),
    "onnx-nchw-batch1-logits": ("nchw_batch1_logits.onnx", (), "onnx"),
}


@pytest.mark.parametrize("kind", list(KINDS))
def test_every_kind_round_trips(zoo: dict, kind: str, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    name, extra, reference = KINDS[kind]
    assert eval_keras.main(_args(zoo, zoo["root"] / name, tmp_path / "out", *extra)) == 0
    out = capsys.readouterr().out
    frame = pd.read_csv(tmp_path / "out" / "predictions.csv")
    assert frame["filename"].tolist() == zoo["filenames"]
    np.testing.assert_allclose(frame[list(PROBABILITY_COLUMNS)].to_numpy(), zoo[reference], atol=1e-5)
    metrics = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert metrics["n_images"] == 12 and metrics["n_patients"] == 6
    assert metrics["evaluated"]["img_size"] == IMG
    assert metrics["evaluated"]["model_output"] == ("logits" if "logits" in kind else "probabilities")
    expected_acc = float(np.mean(np.argmax(zoo[reference], axis=1) == np.arange(12) % 3))
    assert metrics["metrics"]["accuracy"]["value"] == pytest.approx(expected_acc)
    for png in ("confusion_matrix.png", "roc_curves.png"):
        assert cv2.imread(str(tmp_path / "out" / png)) is not None
    assert "Sens Normal: " in out and "PPV Normal: " in out and "macro ROC AUC" in out
    assert out.rstrip().endswith("Seek advice from a qualified health professional.")


def test_onnx_reference_differs_between_images(zoo: dict) -> None:
    # Guards the round trip above against a degenerate model that predicts one constant row.
    assert np.ptp(zoo["onnx"][:, 0]) > 0.05 and np.ptp(zoo["keras"][:, 0]) > 1e-3


def test_default_out_dir_is_beside_the_checkpoint(zoo: dict, capsys: pytest.CaptureFixture) -> None:
    args = [a for a in _args(zoo, zoo["root"] / "full.hdf5", Path("unused")) if a not in ("--out", "unused")]
    assert eval_keras.main(args) == 0
    assert (zoo["root"] / "full_eval" / "metrics.json").is_file()
    assert eval_keras.default_out_dir("r/cp-10-0.35.hdf5") == Path("r/cp-10-0.35_eval")
    assert eval_keras.default_out_dir("r/final.weights.h5") == Path("r/final_eval")
    assert eval_keras.default_out_dir("r/saved_model") == Path("r/saved_model_eval")


def test_time_loop_writes_both_throughputs(zoo: dict, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert eval_keras.main(_args(zoo, zoo["root"] / "model.keras", tmp_path, "--time_loop", "6")) == 0
    timing = json.loads((tmp_path / "timing.json").read_text())
    assert timing["batched"]["n_images"] == 6 and timing["per_image_loop"]["n_images"] == 6
    assert timing["batched"]["images_per_second"] > 0 and timing["per_image_loop"]["images_per_second"] > 0
    assert timing["speedup"] == pytest.approx(
        timing["batched"]["images_per_second"] / timing["per_image_loop"]["images_per_second"]
    )
    assert "Timing on 6 images" in capsys.readouterr().out


def _single_error(capsys: pytest.CaptureFixture) -> str:
    captured = capsys.readouterr()
    errors = [line for line in captured.err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, captured.err
    assert "Traceback" not in captured.err
    return errors[0]


def _bad_checkpoints(root: Path, zoo: dict) -> dict[str, tuple[Path, tuple[str, ...], str]]:
    full = (zoo["root"] / "full.hdf5").read_bytes()
    keras_zip = (zoo["root"] / "model.keras").read_bytes()
    onnx_bytes = (zoo["root"] / "nhwc_dynamic.onnx").read_bytes()
    (root / "random.hdf5").write_bytes(np.random.default_rng(1).bytes(4096))
    (root / "truncated.hdf5").write_bytes(full[: len(full) // 3])
    (root / "truncated.keras").write_bytes(keras_zip[: len(keras_zip) // 2])
    (root / "random.onnx").write_bytes(b"not a protobuf at all" * 50)
    (root / "truncated.onnx").write_bytes(onnx_bytes[: len(onnx_bytes) // 2])
    (root / "notes.txt").write_text("hello")
    (root / "folder").mkdir()
    return {
        "random bytes": (root / "random.hdf5", (), "not a readable HDF5 file"),
        "truncated hdf5": (root / "truncated.hdf5", (), "truncated.hdf5"),
        "truncated keras": (root / "truncated.keras", (), "not a .keras archive"),
        "random onnx": (root / "random.onnx", (), "cannot be loaded as an ONNX model"),
        "truncated onnx": (
            root / "truncated.onnx",
            ("--img_size", "32"),
            "cannot be loaded as an ONNX model",
        ),
        "unknown extension": (root / "notes.txt", (), "unknown kind of model file"),
        "folder": (root / "folder", (), "not a SavedModel"),
        "missing": (root / "missing.hdf5", (), "does not exist"),
        "weights without architecture": (zoo["root"] / "bare" / "cp-01-0.50.hdf5", (), "no run_config.json"),
        "weights of another shape": (
            zoo["root"] / "bare" / "cp-01-0.50.hdf5",
            ("--model", "smallcnn", "--img_size", "64"),
            "does not fit",
        ),
        "img_size disagrees": (zoo["root"] / "model.keras", ("--img_size", "64"), "does not match"),
        "img_size vs run_config": (
            zoo["root"] / "run" / "cp-01-0.50.hdf5",
            ("--img_size", "64"),
            "disagrees",
        ),
        "dynamic onnx without size": (zoo["root"] / "nhwc_dynamic.onnx", (), "give --img_size"),
        "gradcam on onnx": (zoo["root"] / "nchw_batch1_logits.onnx", ("--gradcam", "1"), "--gradcam"),
        "tsne on savedmodel": (zoo["root"] / "saved_model", ("--tsne",), "--tsne"),
        "model flag on full model": (
            zoo["root"] / "full.hdf5",
            ("--model", "smallcnn"),
            "only for weights-only",
        ),
    }


def test_bad_checkpoints_exit_2_with_one_line(
    zoo: dict, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    for case, (path, extra, message) in _bad_checkpoints(tmp_path, zoo).items():
        code = eval_keras.main(_args(zoo, path, tmp_path / "out", *extra))
        line = _single_error(capsys)
        assert code == 2, case
        assert message in line, (case, line)
        shown = path.parent if path.name == "saved_model.pb" else path
        assert str(shown) in line or "--gradcam" in line or "--tsne" in line, (case, line)
    assert not (tmp_path / "out").exists()


def test_bad_lists_exit_2_with_one_line(zoo: dict, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    root = zoo["root"]
    missing = tmp_path / "missing_images.txt"
    missing.write_text((root / "test.txt").read_text() + "pat9 gone.png normal synthetic\n")
    bad_label = tmp_path / "bad_label.txt"
    bad_label.write_text("pat1 img00.png healthy\n")
    cases = {
        missing: "gone.png",
        bad_label: "bad lines",
        tmp_path / "absent.txt": "does not exist",
    }
    for testfile, message in cases.items():
        args = [
            "--checkpoint",
            str(root / "model.keras"),
            "--testfile",
            str(testfile),
            "--data_path",
            str(root / "data"),
            "--out",
            str(tmp_path / "out"),
        ]
        assert eval_keras.main(args) == 2
        line = _single_error(capsys)
        assert str(testfile) in line and message in line, line


def test_help_is_fast_and_names_the_default_out(capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as exit_info:
        eval_keras.parse_args(["--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    assert "_eval/" in text and "--gradcam" in text and "(default: 2000)" in text


def test_corrupt_image_that_passes_the_header_check(
    zoo: dict, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    root = zoo["root"]
    (tmp_path / "data" / "test").mkdir(parents=True)
    for path in (root / "data" / "test").glob("*.png"):
        data = bytearray(path.read_bytes())
        if path.name == "img03.png":
            data[60:90] = bytes(30)  # damaged inside the IDAT chunk; the IEND end marker is intact
        (tmp_path / "data" / "test" / path.name).write_bytes(bytes(data))
    args = [
        "--checkpoint",
        str(root / "model.keras"),
        "--testfile",
        str(root / "test.txt"),
        "--data_path",
        str(tmp_path / "data"),
        "--out",
        str(tmp_path / "out"),
    ]
    assert eval_keras.main(args) == 2
    line = _single_error(capsys)
    assert "could not be read or decoded (Invalid PNG data" in line and "function_node" not in line
    assert f"{tmp_path / 'data' / 'test' / 'img03.png'}: cannot be decoded (Invalid PNG data" in line
    assert eval_keras.main([*args, "--verify_images", "full"]) == 2
    assert "img03.png: cannot be decoded" in _single_error(capsys)


def _evaluate_into(out: Path, checkpoint: Path, data_path: Path, *extra: str) -> int:
    """eval_keras.main with 20 resamples and batches of 4."""
    args = ["--checkpoint", str(checkpoint), "--data_path", str(data_path), "--out", str(out)]
    return eval_keras.main([*args, "--n_bootstrap", "20", "--batch_size", "4", *extra])


def test_image_dir_evaluates_a_validation_list_for_the_weighted_ensemble(
    zoo: dict, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """--image_dir: a val_COVIDx.txt whose images are in DATA_PATH/train, then compare.py --weights-from."""
    import compare

    root = zoo["root"]
    train_dir = tmp_path / "data" / "train"
    train_dir.mkdir(parents=True)
    picked = [1, 2, 3, 4, 6, 8]  # two of each class, four patients none of which is a test patient
    lines = []
    for n, i in enumerate(picked):
        name = zoo["filenames"][i]
        (train_dir / f"val_{name}").write_bytes((root / "data" / "test" / name).read_bytes())
        lines.append(f"valpat{n // 2} val_{name} {CLASSES[i % 3]} synthetic\n")
    val_list = tmp_path / "val_COVIDx.txt"
    val_list.write_text("".join(lines))

    def evaluate(checkpoint: str, out: str, *extra: str) -> int:
        return _evaluate_into(tmp_path / out, root / checkpoint, tmp_path / "data", *extra)

    # The default image folder is DATA_PATH/test, where the validation images are not.
    assert evaluate("model.keras", "wrong", "--testfile", str(val_list)) == 2
    missing = f"image folder {tmp_path / 'data' / 'test'} for --testfile {val_list} does not exist"
    assert missing in _single_error(capsys)
    nope = str(tmp_path / "nope")
    assert evaluate("model.keras", "gone", "--testfile", str(val_list), "--image_dir", nope) == 2
    line = _single_error(capsys)
    assert f"--image_dir {tmp_path / 'nope'} is not a folder" in line and str(val_list) in line

    val = ["--testfile", str(val_list), "--image_dir", str(train_dir)]
    assert evaluate("model.keras", "keras_val", *val) == 0
    assert f"{len(picked)} images from {train_dir}" in capsys.readouterr().out
    frame = pd.read_csv(tmp_path / "keras_val" / "predictions.csv")
    assert frame["filename"].tolist() == [f"val_{zoo['filenames'][i]}" for i in picked]
    np.testing.assert_allclose(frame[list(PROBABILITY_COLUMNS)].to_numpy(), zoo["keras"][picked], atol=1e-5)
    metrics = json.loads((tmp_path / "keras_val" / "metrics.json").read_text())
    assert metrics["evaluated"]["image_dir"] == str(train_dir)
    assert (metrics["n_images"], metrics["n_patients"]) == (6, 3)

    # A second model on the same validation and test images; the ensemble weights come from validation.
    onnx = ("nchw_batch1_logits.onnx",)
    assert evaluate(*onnx, "onnx_val", *val) == 0
    test = ["--testfile", str(root / "test.txt"), "--image_dir", str(root / "data" / "test")]
    assert evaluate("model.keras", "keras_test", *test) == 0
    assert evaluate(*onnx, "onnx_test", *test) == 0
    capsys.readouterr()
    csv = {
        name: str(tmp_path / name / "predictions.csv")
        for name in ("keras_test", "onnx_test", "keras_val", "onnx_val")
    }
    weights_from = ["--weights-from", csv["keras_val"], csv["onnx_val"]]
    cmp = ["--names", "keras", "onnx", *weights_from, "--n-bootstrap", "20", "--out", str(tmp_path / "cmp")]
    assert compare.main([csv["keras_test"], csv["onnx_test"], *cmp]) == 0
    assert "weighted ensemble" in capsys.readouterr().out
    weights = pd.read_csv(tmp_path / "cmp" / "ensemble_weights.csv")
    assert len(weights) == 2 and weights.select_dtypes("number").sum().max() == pytest.approx(1.0)


def _probabilities(out: Path) -> np.ndarray:
    return pd.read_csv(out / "predictions.csv")[list(PROBABILITY_COLUMNS)].to_numpy()


def test_resize_torchvision_changes_the_probabilities_and_compare_shows_it(
    zoo: dict, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """The same model and images through both resize methods; compare.py's agreement table shows it."""
    import compare

    checkpoint = zoo["root"] / "model.keras"
    outs = {}
    for resize in ("baseline", "torchvision"):
        outs[resize] = tmp_path / resize
        assert eval_keras.main(_args(zoo, checkpoint, outs[resize], "--resize", resize)) == 0
        out = capsys.readouterr().out
        assert f"Preprocessing: resize {resize} (--resize), then / 255" in out
        metrics = json.loads((outs[resize] / "metrics.json").read_text())
        assert metrics["preprocessing"] == {"resize": resize, "source": "--resize"}
    baseline, torchvision = _probabilities(outs["baseline"]), _probabilities(outs["torchvision"])
    np.testing.assert_allclose(baseline, zoo["keras"], atol=1e-5)
    np.testing.assert_allclose(torchvision, zoo["keras_torchvision"], atol=1e-5)
    difference = np.abs(baseline - torchvision).max()
    assert difference > 1e-3

    csv = [str(outs[name] / "predictions.csv") for name in ("baseline", "torchvision")]
    cmp = ["--names", "baseline", "torchvision", "--n-bootstrap", "20", "--out", str(tmp_path / "cmp")]
    assert compare.main([*csv, *cmp]) == 0
    capsys.readouterr()
    (row,) = pd.read_csv(tmp_path / "cmp" / "agreement.csv").to_dict("records")
    assert (row["model_a"], row["model_b"], row["n_images"]) == ("baseline", "torchvision", 12)
    assert row["max_abs_diff"] == pytest.approx(difference, abs=1e-6) and row["max_abs_diff"] > 0
    assert "| baseline | torchvision |" in (tmp_path / "cmp" / "comparison.md").read_text()


def test_resize_recorded_in_run_config_is_used_without_the_flag(
    zoo: dict, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """run_config.json's "resize" beside a weights-only checkpoint; a file without the key means baseline."""
    import shutil

    run = tmp_path / "run"
    run.mkdir()
    checkpoint = shutil.copy(zoo["root"] / "run" / "cp-01-0.50.hdf5", run / "cp-01-0.50.hdf5")
    config = json.loads((zoo["root"] / "run" / "run_config.json").read_text())
    config_path = run / "run_config.json"

    def evaluate(name: str, *extra: str) -> tuple[dict, np.ndarray, str]:
        assert eval_keras.main(_args(zoo, checkpoint, tmp_path / name, *extra)) == 0
        captured = capsys.readouterr()  # main's logging set-up writes the warnings to stderr
        assert "Preprocessing: resize " in captured.out
        metrics = json.loads((tmp_path / name / "metrics.json").read_text())
        return metrics["preprocessing"], _probabilities(tmp_path / name), captured.err

    config_path.write_text(json.dumps({**config, "resize": "torchvision"}))
    preprocessing, probabilities, err = evaluate("recorded")
    assert preprocessing == {"resize": "torchvision", "source": f"recorded in {config_path}"}
    np.testing.assert_allclose(probabilities, zoo["keras_torchvision"], atol=1e-5)
    assert "contradicts" not in err

    # The flag wins over the record, with one warning naming both.
    preprocessing, probabilities, err = evaluate("flagged", "--resize", "baseline")
    assert preprocessing == {"resize": "baseline", "source": f"--resize; {config_path} records torchvision"}
    np.testing.assert_allclose(probabilities, zoo["keras"], atol=1e-5)
    (warning,) = [line for line in err.splitlines() if "contradicts" in line]
    assert warning.startswith("WARNING evaluation.preprocessing: --resize baseline contradicts ")
    assert f"contradicts {config_path}, which says" in warning
    assert "trained with resize torchvision" in warning

    # A run_config.json written before the key existed: the baseline's resize, as those runs trained.
    config_path.write_text(json.dumps({key: v for key, v in config.items() if key != "resize"}))
    preprocessing, probabilities, _ = evaluate("old")
    assert preprocessing == {"resize": "baseline", "source": f"recorded in {config_path}"}
    np.testing.assert_allclose(probabilities, zoo["keras"], atol=1e-5)

    config_path.write_text(json.dumps({**config, "resize": "nearest"}))
    assert eval_keras.main(_args(zoo, checkpoint, tmp_path / "bad")) == 2
    line = _single_error(capsys)
    assert str(config_path) in line and "baseline, torchvision" in line and "'nearest'" in line


def test_head_choices_are_the_registry_heads() -> None:
    """eval_keras.py and predict.py offer every registry head (torchvision's linear one included)."""
    import models
    import predict
    from evaluation.arguments import HEADS

    assert HEADS == models.HEADS
    args = eval_keras.parse_args(["--checkpoint", "w.hdf5", "--testfile", "t.txt", "--head", "linear"])
    assert args.head == "linear"
    assert predict.parse_args(["--checkpoint", "w.hdf5", "x.png", "--head", "linear"]).head == "linear"
