"""train_keras.py records which data a run means: list fingerprints in run_config.json (issue 14 item 2)."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import cv2
import pytest

import train_keras
from data.fingerprint import fingerprint_list_files, short
from data.lists import read_list


def _args(root: Path, *extra: str, epochs: int = 1) -> list[str]:
    return ["--trainfile", str(root / "train.txt"), "--testfile", str(root / "test.txt"),
            "--data_path", str(root / "data"), "--output", str(root / "output"), "--img_size", "32",
            "--bs", "4", "--epochs", str(epochs), "--name", "fp-", "--model", "smallcnn", "--weights", "none",
            "--lr", "0.001", "--n_bootstrap", "20", *extra]


@pytest.mark.slow
def test_run_config_names_the_data_and_a_changed_image_blocks_the_resume(
        tiny_covidx: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    root = tmp_path / "covidx"
    shutil.copytree(tiny_covidx, root, ignore=shutil.ignore_patterns("output"))
    assert train_keras.main(_args(root)) == 0
    out = capsys.readouterr().out
    config = json.loads((root / "output" / "fp-lr0.001" / "run_config.json").read_text())
    expected = {
        f"--{split}file": fingerprint_list_files(read_list(root / f"{split}.txt").entries,
                                                 root / "data" / split)[0]
        for split in ("train", "test")
    }
    assert config["fingerprints"] == expected
    assert f"--trainfile {short(expected['--trainfile'])}" in out

    # One training image replaced by another: the same command may not extend this run.
    first = read_list(root / "train.txt").entries[0].filename
    image = cv2.imread(str(root / "data" / "train" / first))
    cv2.imwrite(str(root / "data" / "train" / first), 255 - image)
    assert train_keras.main(_args(root, epochs=2)) == 2
    error = capsys.readouterr().err
    assert "fingerprints[--trainfile]" in error and expected["--trainfile"] in error
    assert "fingerprints[--testfile]" not in error


def test_eval_keras_prints_and_stores_the_test_list_fingerprint(tiny_covidx: Path, tmp_path: Path,
                                                                capsys: pytest.CaptureFixture) -> None:
    import keras

    import eval_keras
    from models import build_model

    model = build_model("smallcnn", num_classes=3, input_shape=(32, 32, 3), weights=None)
    keras.utils.set_random_seed(0)
    model.save(tmp_path / "m.keras")
    root = tmp_path / "covidx"
    shutil.copytree(tiny_covidx, root, ignore=shutil.ignore_patterns("output"))

    def evaluate(out: str) -> tuple[str, str]:
        args = ["--checkpoint", str(tmp_path / "m.keras"), "--testfile", str(root / "test.txt"),
                "--data_path", str(root / "data"), "--out", str(tmp_path / out), "--n_bootstrap", "10"]
        assert eval_keras.main(args) == 0
        printed = capsys.readouterr().out
        evaluated = json.loads((tmp_path / out / "metrics.json").read_text())["evaluated"]
        return evaluated["testfile_fingerprint"], printed

    first, printed = evaluate("a")
    assert first == fingerprint_list_files(read_list(root / "test.txt").entries, root / "data" / "test")[0]
    assert f"fingerprint {short(first)}" in printed
    assert evaluate("b")[0] == first
    name = read_list(root / "test.txt").entries[3].filename
    image = cv2.imread(str(root / "data" / "test" / name))
    image[0, 0] = 255 - image[0, 0]
    cv2.imwrite(str(root / "data" / "test" / name), image)
    assert evaluate("c")[0] != first
