"""compare.py: McNemar, ensembles fitted on validation only, the table, and one-line errors."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import compare
from common.disclaimer import DISCLAIMER
from evaluation import ensemble
from evaluation.agreement import pair_agreement
from evaluation.bootstrap import metrics_with_ci
from evaluation.compare import default_names, mcnemar_test
from evaluation.metrics import metric_table
from evaluation.predictions import read_predictions, write_predictions

N_BOOT = ["--n-bootstrap", "100"]


def confident(classes: np.ndarray) -> np.ndarray:
    probs = np.full((len(classes), 3), 0.1)
    probs[np.arange(len(classes)), classes] = 0.8
    return probs


def write(path: Path, labels: np.ndarray, predicted: np.ndarray, *, prefix: str = "img") -> Path:
    n = len(labels)
    return write_predictions(
        path,
        patient_ids=[f"{prefix}-p{i // 2}" for i in range(n)],
        filenames=[f"{prefix}{i:03d}.png" for i in range(n)],
        labels=labels,
        probabilities=confident(predicted),
    )


@pytest.fixture()
def study(tmp_path: Path) -> dict[str, Path]:
    """Validation files where model A is the better one, test files where B is."""
    val_labels = np.arange(60) % 3
    wrong_half_val = np.where(np.arange(60) % 2 == 0, (val_labels + 1) % 3, val_labels)
    test_labels = np.arange(90) % 3
    wrong_half_test = np.where(np.arange(90) % 2 == 0, (test_labels + 2) % 3, test_labels)
    return {
        "val_a": write(tmp_path / "val_a.csv", val_labels, val_labels, prefix="val"),
        "val_b": write(tmp_path / "val_b.csv", val_labels, wrong_half_val, prefix="val"),
        "test_a": write(tmp_path / "test_a.csv", test_labels, wrong_half_test),
        "test_b": write(tmp_path / "test_b.csv", test_labels, test_labels),
    }


# --- McNemar ----------------------------------------------------------------------------------


def test_mcnemar_hand_computed() -> None:
    # b = 2 (only A right), c = 8 (only B right), 15 concordant images.
    a = np.array([1, 1] + [0] * 8 + [1] * 10 + [0] * 5, dtype=bool)
    b = np.array([0, 0] + [1] * 8 + [1] * 10 + [0] * 5, dtype=bool)
    result = mcnemar_test(correct_a=a, correct_b=b)
    # Two-sided exact binomial: 2 * P(X <= 2 | n=10, p=1/2) = 2 * (1 + 10 + 45) / 1024.
    assert (result["b"], result["c"]) == (2, 8)
    assert result["p_value"] == pytest.approx(112 / 1024, abs=1e-12)
    # 0 vs 5 discordant: 2 / 2**5; no discordant images: p = 1.
    none_right = np.zeros(5, bool)
    assert mcnemar_test(correct_a=none_right, correct_b=~none_right)["p_value"] == pytest.approx(1 / 16)
    all_right = np.ones(4, bool)
    assert mcnemar_test(correct_a=all_right, correct_b=all_right) == {"b": 0, "c": 0, "p_value": 1.0}


def test_default_names() -> None:
    assert default_names(["runs/a/predictions.csv", "runs/b/other.csv"]) == ["predictions", "other"]
    same_stem = ["a/predictions.csv", "b/predictions.csv"]
    assert default_names(same_stem) == same_stem


# --- end to end ----------------------------------------------------------------------------------


def test_compare_main_weights_come_from_validation_only(
    study: dict[str, Path],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    seen: list[dict] = []
    real_fit = ensemble.fit_ensemble_weights

    def spy(**kwargs):
        seen.append(kwargs)
        return real_fit(**kwargs)

    monkeypatch.setattr(ensemble, "fit_ensemble_weights", spy)
    out = tmp_path / "report"
    rc = compare.main(
        [str(study["test_a"]), str(study["test_b"]), "--names", "A", "B",
         "--weights-from", str(study["val_a"]), str(study["val_b"]), "--out", str(out), *N_BOOT]
    )
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    assert captured.out.rstrip().endswith(DISCLAIMER)

    # The weight search saw exactly the validation predictions and nothing else.
    val_a, val_b = read_predictions(study["val_a"]), read_predictions(study["val_b"])
    test_a = read_predictions(study["test_a"])
    assert len(seen) == 1 and set(seen[0]) == {"labels", "probabilities", "step"}
    np.testing.assert_array_equal(seen[0]["labels"], val_a.labels)
    np.testing.assert_array_equal(seen[0]["probabilities"][0], val_a.probabilities)
    np.testing.assert_array_equal(seen[0]["probabilities"][1], val_b.probabilities)
    assert all(len(p) == 60 != len(test_a) for p in seen[0]["probabilities"])

    # Reported weights = weights fitted on the validation files; they favour A,
    # although B is the better model on the test images.
    fitted = real_fit(labels=val_a.labels, probabilities=[val_a.probabilities, val_b.probabilities])
    weights = pd.read_csv(out / "ensemble_weights.csv")
    np.testing.assert_allclose(weights["weight"], fitted)
    np.testing.assert_allclose(fitted, [0.55, 0.45])
    assert list(weights["validation_file"]) == [str(study["val_a"]), str(study["val_b"])]
    assert "Weighted ensemble weights: A 0.55, B 0.45" in captured.out

    table = pd.read_csv(out / "comparison.csv")
    acc = table[table.metric == "accuracy"].set_index("model")["value"]
    assert acc["A"] == pytest.approx(0.5) and acc["B"] == pytest.approx(1.0)
    assert set(acc.index) == {"A", "B", "mean ensemble", "weighted ensemble"}
    # A: 0.8 on a wrong class where B has 0.8 on the right one; the 0.55/0.45 mix follows A.
    assert acc["weighted ensemble"] == pytest.approx(0.5)

    # The table's intervals are the library's patient-bootstrap intervals.
    test_b = read_predictions(study["test_b"])
    direct = metrics_with_ci(labels=test_a.labels, probabilities=test_a.probabilities,
                             patient_ids=test_a.patient_ids, n_bootstrap=100, seed=0)
    row = table[(table.model == "A") & (table.metric == "f1_COVID-19")].iloc[0]
    f1 = direct["f1_COVID-19"]
    assert (row.value, row.ci_low, row.ci_high, row.n_resamples) == pytest.approx(
        (f1["value"], f1["ci_low"], f1["ci_high"], 100)
    )
    assert len(table) == 4 * len(metric_table(comparison=True)) == 4 * 17  # 11 classification + 6 calibration

    # McNemar A vs B: A right on 45, B right on all 90 -> b = 0, c = 45.
    mcnemar = pd.read_csv(out / "mcnemar.csv")
    ab = mcnemar[(mcnemar.model_a == "A") & (mcnemar.model_b == "B")].iloc[0]
    assert (ab.b, ab.c) == (0, 45)
    assert ab.p_value == pytest.approx(2 * 0.5**45)
    assert len(mcnemar) == 6  # 4 columns -> 6 pairs
    assert sorted(p.name for p in out.iterdir()) == [
        "agreement.csv", "comparison.csv", "comparison.md", "disagreements.csv", "ensemble_weights.csv",
        "mcnemar.csv",
    ]
    assert (out / "comparison.md").read_text().rstrip().endswith(DISCLAIMER)
    assert test_b.labels.tolist() == test_a.labels.tolist()


def test_compare_aligns_rows_and_runs_without_validation(
    study: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    shuffled = tmp_path / "shuffled.csv"
    frame = pd.read_csv(study["test_b"], dtype=str, keep_default_na=False)
    frame.sample(frac=1.0, random_state=0)[list(reversed(frame.columns))].to_csv(shuffled, index=False)
    rc = compare.main([str(study["test_b"]), str(shuffled), "--out", str(tmp_path / "o"), *N_BOOT])
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    table = pd.read_csv(tmp_path / "o" / "comparison.csv")
    assert set(table.model) == {"test_b", "shuffled", "mean ensemble"}
    assert (table[table.metric == "accuracy"]["value"] == 1.0).all()
    mcnemar = pd.read_csv(tmp_path / "o" / "mcnemar.csv")
    assert mcnemar[["b", "c"]].to_numpy().sum() == 0  # identical predictions once aligned
    agreement = pd.read_csv(tmp_path / "o" / "agreement.csv").iloc[0]
    assert (agreement.max_abs_diff, agreement.mean_abs_diff, agreement.argmax_disagreements) == (0, 0, 0)
    assert pd.read_csv(tmp_path / "o" / "disagreements.csv").empty  # identical: no image listed
    assert not (tmp_path / "o" / "ensemble_weights.csv").exists()


# --- bad input: exit code 2, one line naming the file ---------------------------------------------


def _edit(src: Path, dst: Path, edit) -> Path:
    edit(pd.read_csv(src, dtype=str, keep_default_na=False)).to_csv(dst, index=False)
    return dst


def _drop_rows(rows: list[int]):
    return lambda frame: frame.drop(index=rows)


def _set(row: int, column: str, value: str):
    def edit(frame: pd.DataFrame) -> pd.DataFrame:
        frame.loc[row, column] = value
        return frame

    return edit


BAD_CASES = {
    "different-images": (_drop_rows([0, 1, 2, 3, 4, 5, 6]),
                         "cover different images: 7 only in", "img000.png, img001.png, img002.png"),
    "different-labels": (_set(4, "label", "normal"), "disagree on the true label of 1 images", "img004.png"),
    "different-patients": (_set(4, "patient_id", "someone"), "disagree on the patient id", "img004.png"),
    "missing-column": (lambda f: f.drop(columns=["p_pneumonia"]), "missing column(s) p_pneumonia", ""),
    "unknown-label": (_set(3, "label", "covid19"), "unknown label on 1 rows: line 5 ('covid19')", ""),
    "nan": (_set(3, "p_normal", "NaN"), "p_normal is NaN or infinite on 1 rows: line 5", ""),
    "sum": (_set(3, "p_normal", "0.5"), "do not sum to 1 (tolerance 0.001) on 1 rows: line 5", ""),
    "duplicate": (_set(3, "filename", "img000.png"), "duplicate file names: img000.png (line 2, line 5)", ""),
}


@pytest.mark.parametrize("case", list(BAD_CASES))
def test_bad_predictions_exit_2_with_one_line(
    case: str, study: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    edit, expected, names = BAD_CASES[case]
    bad = _edit(study["test_b"], tmp_path / "bad.csv", edit)
    rc = compare.main([str(study["test_b"]), str(bad), "--out", str(tmp_path / "o"), *N_BOOT])
    err = capsys.readouterr().err
    assert rc == 2
    assert err.startswith("error: ") and err.count("\n") == 1, err
    assert str(bad) in err and expected in err and names in err
    assert "Traceback" not in err
    assert not (tmp_path / "o").exists()  # nothing written


def test_many_differing_files_are_abbreviated(
    study: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = _edit(study["test_b"], tmp_path / "bad.csv", _drop_rows(list(range(30))))
    assert compare.main([str(study["test_b"]), str(bad), *N_BOOT]) == 2
    err = capsys.readouterr().err
    assert "30 only in" in err and "and 25 more" in err and "0 only in" in err
    assert err.count("\n") == 1


@pytest.mark.parametrize(
    "extra, expected",
    [
        (["--names", "only-one"], "--names: expected 2 names"),
        (["--names", "x", "x"], "names must be unique"),
        (["--names", "x", "mean ensemble"], "not one of mean ensemble"),
        (["--weights-from", "VAL_A"], "--weights-from: expected 2 validation files"),
        (["--weights-from", "TEST_A", "TEST_B"], "share 90 images with test predictions"),
        (["--weights-from", "VAL_A", "VAL_B", "--weight-step", "0.3"], "weight step must divide 1"),
        (["--confidence", "95"], "confidence must be between 0 and 1"),
        (["--weights-from", "VAL_A", "/no/such.csv"], "predictions file /no/such.csv does not exist"),
    ],
)
def test_bad_arguments_exit_2(
    extra: list[str],
    expected: str,
    study: dict[str, Path],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    lookup = {"VAL_A": "val_a", "VAL_B": "val_b", "TEST_A": "test_a", "TEST_B": "test_b"}
    extra = [str(study[lookup[e]]) if e in lookup else e for e in extra]
    test_files = [str(study["test_a"]), str(study["test_b"])]
    rc = compare.main([*test_files, "--out", str(tmp_path / "o"), *N_BOOT, *extra])
    err = capsys.readouterr().err
    assert rc == 2
    assert err.startswith("error: ") and err.count("\n") == 1 and expected in err, err


def test_import_runs_nothing(capsys: pytest.CaptureFixture[str]) -> None:
    import importlib

    module = importlib.reload(compare)
    assert capsys.readouterr() == ("", "")
    assert callable(module.main) and callable(module.parse_args)
    args = module.parse_args(["a.csv", "b.csv"])
    defaults = (args.n_bootstrap, args.seed, args.confidence, args.weight_step, args.out)
    assert defaults == (2000, 0, 0.95, 0.05, ".")


# --- agreement per image --------------------------------------------------------------------------


def test_pair_agreement_hand_computed() -> None:
    a = np.array([[0.8, 0.1, 0.1], [0.6, 0.3, 0.1], [0.2, 0.5, 0.3], [0.1, 0.1, 0.8]])
    b = np.array([[0.7, 0.2, 0.1], [0.3, 0.6, 0.1], [0.2, 0.5, 0.3], [0.1, 0.15, 0.75]])
    # |dp| per image: (0.1, 0.1, 0), (0.3, 0.3, 0), (0, 0, 0), (0, 0.05, 0.05); sum 0.9 over 12 cells.
    pair = pair_agreement(a, b, model_a="A", model_b="B")
    assert (pair.model_a, pair.model_b, pair.n_images) == ("A", "B", 4)
    assert pair.max_abs_diff == pytest.approx(0.3)
    assert pair.mean_abs_diff == pytest.approx(0.9 / 12)
    assert pair.argmax_disagreements == 1  # image 1: normal vs pneumonia
    assert pair.most_different == (1, 0, 3)  # image 2 is identical, so not listed
    np.testing.assert_allclose(pair.image_diff, [0.1, 0.3, 0.0, 0.05])
    assert pair_agreement(a, b, model_a="A", model_b="B", top=2).most_different == (1, 0)
    same = pair_agreement(a, a, model_a="A", model_b="A2")
    assert (same.max_abs_diff, same.mean_abs_diff, same.argmax_disagreements, same.most_different) == (
        0.0, 0.0, 0, ()
    )
    with pytest.raises(ValueError, match=r"received \(4, 3\) and \(3, 3\)"):
        pair_agreement(a, b[:3], model_a="A", model_b="B")


def test_one_model_through_two_preprocessings_no_longer_looks_identical(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    labels = np.arange(6) % 3
    first = confident(labels)
    second = first.copy()
    second[0] = [0.7, 0.2, 0.1]  # |dp| 0.1, 0.1, 0
    second[3] = [0.6, 0.25, 0.15]  # |dp| 0.2, 0.15, 0.05; every argmax unchanged
    files = []
    for name, probs in (("cv2", first), ("tf", second)):
        files.append(str(write_predictions(
            tmp_path / f"{name}.csv", patient_ids=[f"p{i}" for i in range(6)],
            filenames=[f"img{i:03d}.png" for i in range(6)], labels=labels, probabilities=probs,
        )))
    out = tmp_path / "o"
    assert compare.main([*files, "--out", str(out), *N_BOOT]) == 0
    report = capsys.readouterr().out

    # What the comparison reported before: the same metrics, and McNemar b = c = 0.
    table = pd.read_csv(out / "comparison.csv").set_index(["model", "metric"])["value"]
    assert table[("cv2", "accuracy")] == table[("tf", "accuracy")] == 1.0
    assert pd.read_csv(out / "mcnemar.csv")[["b", "c"]].to_numpy().sum() == 0
    # Now the probabilities tell them apart: max 0.2, mean (0.2 + 0.4) / 18, no argmax disagreement.
    agreement = pd.read_csv(out / "agreement.csv")
    assert agreement.to_dict("records") == [
        {"model_a": "cv2", "model_b": "tf", "n_images": 6, "max_abs_diff": pytest.approx(0.2),
         "mean_abs_diff": pytest.approx(0.6 / 18), "argmax_disagreements": 0}
    ]
    top = pd.read_csv(out / "disagreements.csv")
    assert top["filename"].tolist() == ["img003.png", "img000.png"] and top["rank"].tolist() == [1, 2]
    assert top["max_abs_diff"].tolist() == pytest.approx([0.2, 0.1])
    assert top.loc[0, ["predicted_a", "predicted_b", "label"]].tolist() == ["normal"] * 3
    probabilities = top.loc[0, ["p_normal_a", "p_normal_b", "p_COVID-19_b"]].tolist()
    assert probabilities == pytest.approx([0.8, 0.6, 0.15])
    assert "| cv2 | tf | 0.2 | 0.0333 | 0 of 6 | img003.png (0.2) |" in report
    # The mean ensemble is made of the models: only pairs of models are compared.
    assert "mean ensemble" not in set(agreement["model_a"]) | set(agreement["model_b"])
