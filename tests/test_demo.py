"""The README's first command (``make demo`` -> ``demo.py``) end to end."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

import demo
from data.lists import read_list


@pytest.mark.slow
def test_demo_runs_the_whole_job_and_beats_chance(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "demo"
    # The defaults, exactly what `make demo` runs (about 30-60 s on 2 cores).
    assert demo.main(["--out", str(out)]) == 0
    printed = capsys.readouterr().out

    test_list = read_list(out / "covidx" / "test_COVIDx.txt").entries
    train_list = read_list(out / "covidx" / "train_COVIDx.txt").entries
    assert (len(train_list), len(test_list)) == (335, 65)  # docs/dataset.md's table
    assert {e.label for e in test_list} == {"normal", "pneumonia", "COVID-19"}

    final = json.loads((out / "eval_final" / "metrics.json").read_text())
    assert final["n_images"] == len(test_list)
    # Chance on three classes is 1/3; the synthetic opacities are learnable in eight epochs.
    assert final["metrics"]["accuracy"]["value"] >= 0.6
    assert final["evaluated"]["kind"] == "keras-h5"
    early = json.loads((out / "eval_early" / "metrics.json").read_text())
    assert early["evaluated"]["kind"] == "keras-weights" and early["n_images"] == len(test_list)

    assert len(list((out / "eval_final" / "gradcam").glob("*.png"))) == 6  # 2 per class
    comparison = (out / "comparison" / "comparison.md").read_text()
    assert "| accuracy |" in comparison and "McNemar" in comparison
    # Every step's command is shown, and the predictions end with the research-use notice.
    for script in ("create_covidx.py", "train_keras.py", "eval_keras.py", "compare.py", "predict.py"):
        assert f"$ python {script} " in printed
    assert printed.count(".dcm: ") == 1 and "Research use only" in printed.split("=== 5.")[1]


def test_demo_commands_parse_with_each_tools_own_arguments(tmp_path: Path) -> None:
    """The argument lists the demo builds are valid for the scripts they drive, value for value."""
    import compare
    import create_covidx
    import eval_keras
    import train_keras

    paths = demo.DemoPaths(tmp_path)
    build = create_covidx.parse_args(demo.create_covidx_argv(paths, synthetic_size=40, seed=3))
    assert (build.synthetic, build.synthetic_size, build.seed, build.out) == (
        tmp_path / "sources", 40, 3, tmp_path / "covidx"
    )
    train = train_keras.parse_args(demo.train_argv(
        paths, name="demo-smallcnn-", model="smallcnn", head="avg", img_size=48, lr=0.002, bs=6, epochs=3,
        seed=7,
    ))
    assert (train.model, train.head, train.img_size, train.lr, train.bs, train.epochs, train.seed) == (
        "smallcnn", "avg", 48, 0.002, 6, 3, 7
    )
    assert (train.weights, train.resume, train.output) == ("none", "off", str(tmp_path / "output"))
    assert train.testfile == str(tmp_path / "covidx" / "test_COVIDx.txt")
    final = eval_keras.parse_args(demo.eval_argv(paths, checkpoint=tmp_path / "f.hdf5", out=paths.eval_final,
                                                 gradcam=2))
    early = eval_keras.parse_args(demo.eval_argv(paths, checkpoint=tmp_path / "e.hdf5", out=paths.eval_early))
    assert (final.gradcam, early.gradcam, final.n_bootstrap) == (2, 0, 500)
    assert (final.out, early.out) == (str(tmp_path / "eval_final"), str(tmp_path / "eval_early"))
    both = compare.parse_args(demo.compare_argv(paths, early=tmp_path / "cp-02-0.51.hdf5"))
    assert both.names == ["final", "cp-02-0.51"] and both.out == str(tmp_path / "comparison")
    assert both.predictions == [str(paths.eval_final / "predictions.csv"),
                                str(paths.eval_early / "predictions.csv")]


def test_early_checkpoint_prefers_epoch_two_and_names_the_folder_without_one(tmp_path: Path) -> None:
    for name in ("cp-01-0.90.hdf5", "cp-02-0.70.hdf5", "cp-03-0.60.hdf5"):
        (tmp_path / name).write_bytes(b"")
    assert demo.early_checkpoint(tmp_path).name == "cp-02-0.70.hdf5"
    (tmp_path / "cp-02-0.70.hdf5").unlink()
    assert demo.early_checkpoint(tmp_path).name == "cp-01-0.90.hdf5"
    with pytest.raises(FileNotFoundError, match="no epoch checkpoint cp-\\*.hdf5 in .*received none"):
        demo.early_checkpoint(tmp_path / "missing")
