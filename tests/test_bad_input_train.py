"""Bad flags and inputs to train_keras.py: one ``error:`` line each, exit code 2, nothing left behind.

Every case fails before the first training step, in this process (``train_keras.main``), so the
module is fast. Each asserts the exit code, that stderr is exactly one line naming the flag or file
and what was received, that no traceback was printed, and that no run folder and no hidden
``.partial-*`` file was left anywhere under the test's folder.
"""
from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

import h5py
import keras
import numpy as np
import pytest

import train_keras
from training.checkpoints import write_weights_hdf5

RUN = "bad-lr0.001"


@pytest.fixture(scope="module")
def inputs(tiny_covidx: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The tiny COVIDx folder plus the bad files the cases point at (made once for the module)."""
    root = tmp_path_factory.mktemp("bad-inputs")
    good = write_weights_hdf5(_smallcnn(), root / "good.hdf5")
    data = good.read_bytes()
    (root / "cut.hdf5").write_bytes(data[: len(data) // 2])
    (root / "notes.hdf5").write_text("not a checkpoint\n")
    other = keras.Sequential(
        [keras.Input((32, 32, 3)), keras.layers.Flatten(), keras.layers.Dense(3)], name="other"
    )
    write_weights_hdf5(other, root / "other.hdf5")
    shutil.copy(root / "other.hdf5", root / "other.weights.bin")
    (root / "a-file").write_text("x")

    train = (tiny_covidx / "train.txt").read_text().splitlines(keepends=True)
    images = tiny_covidx / "data" / "train"
    png = (images / "train001.png").read_bytes()
    (images / "cut-bad.png").write_bytes(png[: len(png) // 2])
    (images / "empty-bad.png").write_bytes(b"")
    lists = {
        "two-fields.txt": "p1 train000.png\n",
        "unknown-label.txt": "p1 train000.png covid\n",
        "missing.txt": "p1 nowhere.png normal\n",
        "cut.txt": "px cut-bad.png pneumonia\n",
        "empty-image.txt": "px empty-bad.png normal\n",
    }
    for name, extra in lists.items():
        (root / name).write_text("".join(train) + extra)
    return {"root": root, "covidx": tiny_covidx, "images": images}


def _smallcnn() -> keras.Model:
    from models import build_model

    return build_model("smallcnn", num_classes=3, input_shape=(32, 32, 3), weights=None)


def _args(covidx: Path, output: Path, *extra: str) -> list[str]:
    return [
        "--trainfile",
        str(covidx / "train.txt"),
        "--testfile",
        str(covidx / "test.txt"),
        "--data_path",
        str(covidx / "data"),
        "--output",
        str(output),
        "--img_size",
        "32",
        "--bs",
        "4",
        "--epochs",
        "1",
        "--name",
        "bad-",
        "--model",
        "smallcnn",
        "--weights",
        "none",
        "--lr",
        "0.001",
        *extra,
    ]


def _set(args: list[str], flag: str, value: str) -> list[str]:
    args = list(args)
    args[args.index(flag) + 1] = value
    return args


# (id, how to change the arguments given the inputs, what the one line must contain)
CASES: list[tuple[str, Callable[[list[str], dict[str, Path]], list[str]], str]] = [
    (
        "img_size-0",
        lambda a, i: _set(a, "--img_size", "0"),
        "error: argument --img_size: must be an integer >= 1, received 0",
    ),
    (
        "img_size-negative",
        lambda a, i: _set(a, "--img_size", "-1"),
        "error: argument --img_size: must be an integer >= 1, received -1",
    ),
    ("bs-0", lambda a, i: _set(a, "--bs", "0"), "error: argument --bs: must be an integer >= 1, received 0"),
    (
        "epochs-0",
        lambda a, i: _set(a, "--epochs", "0"),
        "error: argument --epochs: must be an integer >= 1, received 0",
    ),
    (
        "lr-negative",
        lambda a, i: _set(a, "--lr", "-1"),
        "error: argument --lr: must be a finite number > 0, received -1",
    ),
    (
        "lr-inf",
        lambda a, i: _set(a, "--lr", "inf"),
        "error: argument --lr: must be a finite number > 0, received inf",
    ),
    (
        "lr-nan",
        lambda a, i: _set(a, "--lr", "nan"),
        "error: argument --lr: must be a finite number > 0, received nan",
    ),
    (
        "lr-text",
        lambda a, i: _set(a, "--lr", "fast"),
        "error: argument --lr: must be a finite number > 0, received fast",
    ),
    (
        "img_size-huge",
        lambda a, i: _set(a, "--img_size", "100000"),
        "error: --img_size must be at most 8192 px (about twice the largest COVIDx source images; larger "
        "sizes only "
        "upsample), received 100000",
    ),
    (
        "batch-beyond-memory",
        lambda a, i: _set(_set(a, "--img_size", "8000"), "--bs", "512"),
        "error: --img_size 8000 with a batch of 512: one batch of float32 images is 366.2 GiB, more than "
        "25% of",
    ),
    (
        "output-is-a-file",
        lambda a, i: _set(a, "--output", str(i["root"] / "a-file")),
        "is a file, not a folder",
    ),
    (
        "output-under-a-file",
        lambda a, i: _set(a, "--output", str(i["root"] / "a-file" / "out")),
        "a-file is a file, not a folder",
    ),
    (
        "checkpoint-not-hdf5",
        lambda a, i: [*a, "--checkpoint", str(i["root"] / "notes.hdf5")],
        "notes.hdf5 is not a readable HDF5 file (Unable to synchronously open file (file signature not "
        "found))",
    ),
    (
        "checkpoint-truncated",
        lambda a, i: [*a, "--checkpoint", str(i["root"] / "cut.hdf5")],
        "cut.hdf5 is not a readable HDF5 file (Unable to synchronously open file (truncated file",
    ),
    (
        "checkpoint-other-architecture",
        lambda a, i: [*a, "--checkpoint", str(i["root"] / "other.hdf5")],
        "error: --checkpoint: checkpoint {root}/other.hdf5 does not fit the model 'smallcnn': Layer count "
        "mismatch",
    ),
    (
        "checkpoint-wrong-suffix",
        lambda a, i: [*a, "--checkpoint", str(i["root"] / "other.weights.bin")],
        "holds Keras 2-layout HDF5 weights; its name must end in .hdf5 or .h5",
    ),
    (
        "checkpoint-missing",
        lambda a, i: [*a, "--checkpoint", str(i["root"] / "nope.hdf5")],
        "error: --checkpoint ",
    ),
    (
        "list-two-fields",
        lambda a, i: _set(a, "--trainfile", str(i["root"] / "two-fields.txt")),
        "two-fields.txt has 1 bad lines: line 46: expected at least 3 fields (patientid filename label), "
        "found 2",
    ),
    (
        "list-unknown-label",
        lambda a, i: _set(a, "--trainfile", str(i["root"] / "unknown-label.txt")),
        "unknown-label.txt has 1 bad lines: line 46: no known label",
    ),
    (
        "image-missing",
        lambda a, i: _set(a, "--trainfile", str(i["root"] / "missing.txt")),
        "1 of 46 images are missing or unreadable: ",
    ),
    (
        "image-truncated",
        lambda a, i: _set(a, "--trainfile", str(i["root"] / "cut.txt")),
        "cut-bad.png: truncated PNG (no IEND chunk at its end)",
    ),
    (
        "image-empty",
        lambda a, i: _set(a, "--trainfile", str(i["root"] / "empty-image.txt")),
        "empty-bad.png: empty file",
    ),
    (
        "data-path-missing",
        lambda a, i: _set(a, "--data_path", str(i["root"] / "no-data")),
        "no-data does not exist",
    ),
]


@pytest.mark.parametrize("mutate, message", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input_is_one_line_and_leaves_nothing(
    inputs: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture, mutate, message: str
) -> None:
    output = tmp_path / "output"
    args = mutate(_args(inputs["covidx"], output), inputs)
    assert train_keras.main(args) == 2
    captured = capsys.readouterr()
    # Log records (INFO/WARNING lines of a run that got as far as reading its lists) aside, one line.
    lines = [line for line in captured.err.strip().splitlines() if not line.startswith(("INFO ", "WARNING "))]
    message = message.replace("{root}", str(inputs["root"]))
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], lines
    assert "Traceback" not in captured.err + captured.out
    assert not (output / RUN).exists(), "a failed start left a run folder behind"
    partials = [
        p
        for p in [
            *tmp_path.rglob(".partial-*"),
            *inputs["root"].rglob(".partial-*"),
            *inputs["covidx"].rglob(".partial-*"),
        ]
    ]
    assert partials == []


def test_missing_image_names_the_file(
    inputs: dict[str, Path], capsys: pytest.CaptureFixture, tmp_path: Path
) -> None:
    args = _set(
        _args(inputs["covidx"], tmp_path / "output"), "--trainfile", str(inputs["root"] / "missing.txt")
    )
    assert train_keras.main(args) == 2
    err = capsys.readouterr().err
    assert f"{inputs['images'] / 'nowhere.png'}: file does not exist" in err


def test_a_valid_checkpoint_is_accepted_up_front(inputs: dict[str, Path]) -> None:
    """The up-front --checkpoint check lets a good file through (its weights are loaded when training starts).
    """
    args = train_keras.parse_args(
        [*_args(inputs["covidx"], inputs["root"] / "out"), "--checkpoint", str(inputs["root"] / "good.hdf5")]
    )
    config = train_keras.resolve_config(args, replicas=1, strategy_name="default", gpu=False)
    assert config.checkpoint.endswith("good.hdf5")
    with h5py.File(inputs["root"] / "good.hdf5", "r") as f:
        assert "layer_names" in f.attrs
    assert np.isfinite(config.lr) and config.model["input_shape"] == [32, 32, 3]
    assert not (inputs["root"] / "out").exists()
