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
