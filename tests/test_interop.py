"""Every checkpoint kind loads in plain TensorFlow code: Keras 3, tf_keras (Keras 2 API), SavedModel.

Each loader runs in a fresh subprocess, outside the repository, that imports
nothing from the project; the code it runs is taken verbatim from
docs/checkpoints.md, so the documented snippets are tested too.
"""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import cv2
import numpy as np
import pytest

from conftest import REPO_ROOT
from models import build_model
from training.checkpoints import load_weights_file, write_weights_hdf5
from training.export import decode_for_serving, export_saved_model, float32_model, write_portable_h5

IMG = 32
PROJECT_MODULES = ("models", "training", "data", "common", "evaluation")


def _snippet(marker: str, document: str = "docs/checkpoints.md") -> str:
    text = (REPO_ROOT / document).read_text()
    match = re.search(rf"<!-- {marker}: begin -->\s*```python\n(.*?)```\s*<!-- {marker}: end -->", text, re.S)
    assert match, f"snippet {marker} not found in {document}"
    return match.group(1)


def test_readme_shows_the_tested_rebuild_snippet() -> None:
    """The README's ten lines are the ones the isolated-process tests below execute."""
    assert _snippet("baseline-rebuild", "README.md") == _snippet("baseline-rebuild")


def _run_isolated(script: str, cwd: Path) -> dict:
    """Run ``script`` in a fresh interpreter that cannot import the project; return its JSON output."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["TF_CPP_MIN_LOG_LEVEL"] = "2"
    guard = textwrap.dedent(
        f"""
        import json, sys
        sys.path = [p for p in sys.path if p not in ("", {str(REPO_ROOT)!r})]
        RESULT = {{}}
        """
    )
    tail = textwrap.dedent(
        f"""
        RESULT["project_modules"] = sorted(m for m in sys.modules if m.split(".")[0] in {PROJECT_MODULES!r})
        print("RESULT=" + json.dumps(RESULT))
        """
    )
    proc = subprocess.run([sys.executable, "-c", guard + script + tail], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    line = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT=")][-1]
    result = json.loads(line[len("RESULT="):])
    assert result.pop("project_modules") == []
    return result


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """The baseline at 32 px with non-trivial weights, saved in every format, plus expected outputs."""
    import keras

    folder = tmp_path_factory.mktemp("interop")
    keras.utils.set_random_seed(1)
    # Built in mixed precision, as on a GPU node: the exports must still be plain float32.
    model = build_model("resnet50v2", input_shape=(IMG, IMG, 3), dtype_policy="mixed_float16")
    rng = np.random.default_rng(0)
    model.set_weights([w + rng.normal(0, 0.02, w.shape).astype(w.dtype) for w in model.get_weights()])
    final = float32_model(model, lambda dtype_policy: build_model("resnet50v2", input_shape=(IMG, IMG, 3),
                                                                  dtype_policy=dtype_policy))
    x = rng.random((4, IMG, IMG, 3)).astype(np.float32)
    png = (rng.random((50, 60)) * 255).astype(np.uint8)
    cv2.imwrite(str(folder / "xray.png"), png)
    decoded = decode_for_serving(open(folder / "xray.png", "rb").read(), img_size=IMG, channels=3).numpy()
    write_portable_h5(final, folder / "final_model.hdf5")
    write_weights_hdf5(final, folder / "cp-01-0.50.hdf5")
    export_saved_model(final, folder / "saved_model")
    np.save(folder / "x.npy", x)
    return {
        "folder": folder,
        "expected": final.predict(x, verbose=0).tolist(),
        "expected_png": final.predict(decoded[None], verbose=0).tolist(),
        "float32": all(layer.dtype_policy.name == "float32" for layer in final.layers),
        "names": (final.layers[0].name, final.layers[-1].name),
    }


def test_export_is_float32_with_surfsara_layer_names(exported: dict) -> None:
    assert exported["float32"]
    assert exported["names"] == ("input_1", "FC_3")


@pytest.mark.slow
def test_keras3_loads_every_kind_without_project_code(exported: dict) -> None:
    folder = exported["folder"]
    script = (
        textwrap.dedent(
            """
        import numpy as np
        import keras
        batch = np.load("x.npy")
        full = keras.models.load_model("final_model.hdf5")
        RESULT["full"] = full.predict(batch, verbose=0).tolist()
        RESULT["names"] = [full.layers[0].name, full.layers[-1].name]
        IMG_SIZE, CHECKPOINT = 32, "cp-01-0.50.hdf5"
        """
        )
        + _snippet("baseline-rebuild")
        + textwrap.dedent(
            """
        RESULT["weights"] = model.predict(batch, verbose=0).tolist()
        SAVED_MODEL, IMAGE = "saved_model", "xray.png"
        """
        )
        + _snippet("savedmodel-example")
        + textwrap.dedent(
            """
        RESULT["bytes"] = probabilities.numpy().tolist()
        serving = loaded.signatures["serving_default"](images=tf.constant(batch))
        RESULT["serving"] = serving["probabilities"].numpy().tolist()
        RESULT["zeros_shape"] = list(same_shape.shape)
        """
        )
    )
    result = _run_isolated(script, folder)
    expected = np.array(exported["expected"])
    np.testing.assert_allclose(result["full"], expected, atol=1e-5)
    np.testing.assert_allclose(result["weights"], expected, atol=1e-5)
    np.testing.assert_allclose(result["serving"], expected, atol=1e-5)
    np.testing.assert_allclose(result["bytes"], exported["expected_png"], atol=1e-5)
    assert result["names"] == ["input_1", "FC_3"]
    assert result["zeros_shape"] == [1, 3]


@pytest.mark.slow
def test_tf_keras_loads_full_model_and_weights(exported: dict) -> None:
    folder = exported["folder"]
    rebuild = _snippet("baseline-rebuild").replace(
        "import keras  # or: import tf_keras as keras", "import tf_keras as keras"
    )
    script = (
        textwrap.dedent(
            """
        import numpy as np
        import tf_keras
        batch = np.load("x.npy")
        full = tf_keras.models.load_model("final_model.hdf5")
        RESULT["full"] = full.predict(batch, verbose=0).tolist()
        RESULT["dtype"] = full.layers[-1].dtype
        IMG_SIZE, CHECKPOINT = 32, "cp-01-0.50.hdf5"
        """
        )
        + rebuild
        + textwrap.dedent(
            """
        RESULT["weights"] = model.predict(batch, verbose=0).tolist()
        RESULT["keras_module"] = keras.__name__
        """
        )
    )
    result = _run_isolated(script, folder)
    expected = np.array(exported["expected"])
    np.testing.assert_allclose(result["full"], expected, atol=1e-5)
    np.testing.assert_allclose(result["weights"], expected, atol=1e-5)
    assert result["dtype"] == "float32" and result["keras_module"] == "tf_keras"


def test_weights_file_round_trips_in_process(exported: dict) -> None:
    model = build_model("resnet50v2", input_shape=(IMG, IMG, 3))
    load_weights_file(model, exported["folder"] / "cp-01-0.50.hdf5")
    x = np.load(exported["folder"] / "x.npy")
    np.testing.assert_allclose(model.predict(x, verbose=0), exported["expected"], atol=1e-5)


@pytest.mark.parametrize(
    "content, message",
    [
        (b"\x00" * 64, "not a readable HDF5 file"),
        (None, "holds no Keras model or weights"),
    ],
)
def test_foreign_files_get_a_clear_error(tmp_path: Path, content: bytes | None, message: str) -> None:
    import h5py

    path = tmp_path / "cp.hdf5"
    if content is None:
        with h5py.File(path, "w") as f:
            f.create_dataset("something", data=np.zeros(3))
    else:
        path.write_bytes(content)
    model = build_model("smallcnn", input_shape=(IMG, IMG, 3))
    with pytest.raises(ValueError, match=message):
        load_weights_file(model, path)


def test_weights_of_another_architecture_are_refused(exported: dict) -> None:
    model = build_model("smallcnn", input_shape=(IMG, IMG, 3))
    with pytest.raises(ValueError, match=r"cp-01-0.50.hdf5 does not fit the model"):
        load_weights_file(model, exported["folder"] / "cp-01-0.50.hdf5")


def test_truncated_checkpoint_is_refused(exported: dict, tmp_path: Path) -> None:
    data = (exported["folder"] / "cp-01-0.50.hdf5").read_bytes()
    cut = tmp_path / "cp-02-0.40.hdf5"
    cut.write_bytes(data[: len(data) // 3])
    model = build_model("resnet50v2", input_shape=(IMG, IMG, 3))
    with pytest.raises(ValueError, match="cp-02-0.40.hdf5"):
        load_weights_file(model, cut)
