"""Metrics, the patient bootstrap and the printed/JSON report, against hand-computed numbers."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from sklearn.metrics import precision_recall_fscore_support, roc_auc_score

from common.disclaimer import DISCLAIMER
from evaluation.bootstrap import (
    metrics_with_ci,
    patient_bootstrap_counts,
    percentile_interval,
    replicate_metrics,
)
from evaluation.compare import compare_predictions, comparison_frame, format_comparison
from evaluation.metrics import (
    Metric,
    Statistics,
    confusion_matrix,
    metric_table,
    metrics_from_confusion,
    point_metrics,
    roc_auc_ovr,
    sensitivity_ppv,
    weighted_roc_auc,
)
from evaluation.predictions import make_predictions
from evaluation.report import (
    evaluate_predictions,
    format_report,
    surfsara_lines,
    write_metrics_json,
)

# SURFsara's published confusion matrix (rows true, columns predicted).
SURFSARA_CM = np.array([[96, 4, 0], [7, 92, 1], [0, 3, 43]])

# Nine fixed predictions; the expected numbers below are worked out by hand.
LABELS = np.array([0, 0, 0, 1, 1, 1, 2, 2, 2])
PROBS = np.array(
    [
        [0.80, 0.10, 0.10],  # normal    -> normal
        [0.60, 0.30, 0.10],  # normal    -> normal
        [0.30, 0.60, 0.10],  # normal    -> pneumonia
        [0.20, 0.70, 0.10],  # pneumonia -> pneumonia
        [0.50, 0.40, 0.10],  # pneumonia -> normal
        [0.10, 0.50, 0.40],  # pneumonia -> pneumonia
        [0.10, 0.20, 0.70],  # COVID-19  -> COVID-19
        [0.30, 0.20, 0.50],  # COVID-19  -> COVID-19
        [0.15, 0.55, 0.30],  # COVID-19  -> pneumonia
    ]
)
EXPECTED_CM = [[2, 1, 0], [1, 2, 0], [0, 1, 2]]
EXPECTED_SENS = [2 / 3, 2 / 3, 2 / 3]
EXPECTED_PPV = [2 / 3, 2 / 4, 2 / 2]  # column sums 3, 4, 2
EXPECTED_F1 = [4 / 6, 4 / 7, 4 / 5]  # 2TP / (row + column)
EXPECTED_MACRO_F1 = (4 / 6 + 4 / 7 + 4 / 5) / 3  # 214/315
# One-vs-rest AUC = (positive > negative pairs + 0.5 ties) / (3 positives x 6 negatives):
# normal 0.8>6, 0.6>6, 0.3>4 and ties 0.3 once -> 16.5; pneumonia 6 + 4 + 4 = 14; COVID-19 6 + 6 + 5 = 17.
EXPECTED_AUC = [16.5 / 18, 14 / 18, 17 / 18]


def test_surfsara_lines_match_published_output() -> None:
    sens_line, ppv_line = surfsara_lines(SURFSARA_CM)
    assert sens_line == "Sens Normal: 0.960, Pneumonia: 0.920, COVID-19: 0.935"
    assert ppv_line == "PPV Normal: 0.932, Pneumonia 0.929, COVID-19: 0.977"


def test_sensitivity_ppv_zero_denominator_gives_zero() -> None:
    sens, ppv = sensitivity_ppv(np.array([[5, 0, 0], [3, 0, 0], [0, 0, 0]]))
    np.testing.assert_allclose(sens, [1.0, 0.0, 0.0])
    np.testing.assert_allclose(ppv, [5 / 8, 0.0, 0.0])


def test_point_metrics_hand_computed() -> None:
    cm = confusion_matrix(LABELS, PROBS.argmax(axis=1))
    assert cm.tolist() == EXPECTED_CM
    sens, ppv = sensitivity_ppv(cm)
    np.testing.assert_allclose(sens, EXPECTED_SENS)
    np.testing.assert_allclose(ppv, EXPECTED_PPV)
    np.testing.assert_allclose(roc_auc_ovr(LABELS, PROBS), EXPECTED_AUC)
    m = point_metrics(LABELS, PROBS)
    assert m["accuracy"] == pytest.approx(6 / 9)
    assert m["macro_f1"] == pytest.approx(214 / 315)
    assert m["macro_f1"] == pytest.approx(EXPECTED_MACRO_F1)
    for k, c in enumerate(("normal", "pneumonia", "COVID-19")):
        assert m[f"f1_{c}"] == pytest.approx(EXPECTED_F1[k])
        assert m[f"recall_{c}"] == pytest.approx(EXPECTED_SENS[k])
        assert m[f"precision_{c}"] == pytest.approx(EXPECTED_PPV[k])
        assert m[f"auc_{c}"] == pytest.approx(EXPECTED_AUC[k])
    assert m["macro_auc"] == pytest.approx(47.5 / 54)


def test_vectorised_metrics_agree_with_sklearn() -> None:
    rng = np.random.default_rng(3)
    labels = rng.integers(0, 3, 200)
    probs = rng.dirichlet([1, 1, 1], 200)
    probs[:20] = probs[0]  # tied scores
    weights = rng.integers(0, 4, size=(6, 200))
    for k in range(3):
        ours = weighted_roc_auc(labels == k, probs[:, k], weights)
        ref = [roc_auc_score(labels == k, probs[:, k], sample_weight=w) for w in weights]
        np.testing.assert_allclose(ours, ref, atol=1e-12)
    pred = probs.argmax(axis=1)
    m = metrics_from_confusion(confusion_matrix(labels, pred))
    p, r, f, _ = precision_recall_fscore_support(labels, pred, labels=[0, 1, 2], zero_division=0)
    np.testing.assert_allclose(m["precision"], p)
    np.testing.assert_allclose(m["recall"], r)
    np.testing.assert_allclose(m["f1"], f)


def test_weighted_auc_undefined_without_negatives() -> None:
    weights = np.array([[1, 1, 0], [1, 0, 1]])
    out = weighted_roc_auc(np.array([True, True, False]), np.array([0.9, 0.8, 0.1]), weights)
    assert np.isnan(out[0])
    assert out[1] == 1.0


# --- patient bootstrap -------------------------------------------------------------------------


def test_bootstrap_counts_move_patients_as_a_whole() -> None:
    patient_ids = np.array(["a"] * 5 + ["b"] * 3 + ["c", "d", "e", "f"])
    counts = patient_bootstrap_counts(patient_ids, n_bootstrap=300, seed=7)
    assert counts.shape == (300, 12)
    for pid in np.unique(patient_ids):
        members = counts[:, patient_ids == pid]
        assert (members == members[:, :1]).all()  # all images of a patient share the count
    # Each resample draws as many patients as there are (6), with replacement.
    first_image = [int(np.flatnonzero(patient_ids == p)[0]) for p in np.unique(patient_ids)]
    np.testing.assert_array_equal(counts[:, first_image].sum(axis=1), 6)
    assert (counts[:, first_image] >= 2).any()  # with replacement: some patient is drawn twice
    np.testing.assert_array_equal(counts, patient_bootstrap_counts(patient_ids, n_bootstrap=300, seed=7))
    assert not np.array_equal(counts, patient_bootstrap_counts(patient_ids, n_bootstrap=300, seed=8))


def test_replicates_equal_metrics_on_explicitly_resampled_images() -> None:
    rng = np.random.default_rng(0)
    labels = np.repeat([0, 1, 2], 12)
    probs = rng.dirichlet([1, 1, 1], 36)
    patient_ids = np.array([f"p{i // 3}" for i in range(36)])
    counts = patient_bootstrap_counts(patient_ids, n_bootstrap=8, seed=1)
    reps = replicate_metrics(labels=labels, probabilities=probs, counts=counts)
    for b in range(8):
        # "take all their images": a patient drawn twice contributes each image twice
        idx = np.repeat(np.arange(36), counts[b])
        direct = point_metrics(labels[idx], probs[idx])
        for name, value in direct.items():
            if not np.isnan(reps[name][b]):
                assert reps[name][b] == pytest.approx(value, abs=1e-12), (b, name)


def test_patient_bootstrap_is_wider_than_image_bootstrap() -> None:
    # One patient with 30 images, all wrong; 30 patients with one image each, all right.
    labels = np.zeros(60, dtype=int)
    probs = np.tile([0.9, 0.05, 0.05], (60, 1))
    probs[:30] = [0.05, 0.9, 0.05]
    patients = np.array(["big"] * 30 + [f"p{i}" for i in range(30)])
    kwargs = dict(labels=labels, probabilities=probs, n_bootstrap=1000, seed=0, metrics=metric_table()[:1])
    by_patient = metrics_with_ci(patient_ids=patients, **kwargs)["accuracy"]
    by_image = metrics_with_ci(patient_ids=np.arange(60).astype(str), **kwargs)["accuracy"]
    assert by_patient["value"] == by_image["value"] == 0.5
    # Image level: ~0.5 +- 2 x 0.065. Patient level: the big patient is left out of
    # (30/31)^31 = 36% of the resamples, which then score 1.0.
    assert 0.35 < by_image["ci_low"] < 0.40 and 0.60 < by_image["ci_high"] < 0.65
    assert by_patient["ci_high"] == 1.0
    assert by_patient["ci_low"] < 0.35
    assert (by_patient["ci_high"] - by_patient["ci_low"]) > 2 * (by_image["ci_high"] - by_image["ci_low"])


def test_resamples_lacking_a_class_are_skipped_and_counted() -> None:
    # COVID-19 comes from a single patient ("c"), so many resamples lack the class.
    labels = np.array([0] * 10 + [1] * 10 + [2] * 4)
    rng = np.random.default_rng(5)
    probs = rng.dirichlet([1, 1, 1], 24)
    patients = np.array([f"n{i}" for i in range(10)] + [f"p{i}" for i in range(10)] + ["c"] * 4)
    result = metrics_with_ci(
        labels=labels, probabilities=probs, patient_ids=patients, n_bootstrap=500, seed=2
    )
    counts = patient_bootstrap_counts(patients, n_bootstrap=500, seed=2)
    with_covid = int((counts[:, -1] > 0).sum())
    assert 250 < with_covid < 400  # 1 - (20/21)^21 = 64% of 500
    for name in ("auc_COVID-19", "recall_COVID-19", "f1_COVID-19", "macro_f1", "macro_auc"):
        assert result[name]["n_resamples"] == with_covid, name
    for name in ("accuracy", "precision_COVID-19", "auc_normal", "f1_normal"):
        assert result[name]["n_resamples"] == 500, name


def test_percentile_interval() -> None:
    low, high, used = percentile_interval(np.r_[np.arange(101.0), np.nan, np.nan], confidence=0.9)
    assert (low, high, used) == (pytest.approx(5.0), pytest.approx(95.0), 101)
    assert percentile_interval(np.array([np.nan]), confidence=0.95) == (None, None, 0)


def test_bad_bootstrap_settings() -> None:
    with pytest.raises(ValueError, match="confidence"):
        metrics_with_ci(labels=LABELS, probabilities=PROBS, patient_ids=LABELS.astype(str), confidence=95)
    with pytest.raises(ValueError, match="n_bootstrap"):
        metrics_with_ci(labels=LABELS, probabilities=PROBS, patient_ids=LABELS.astype(str), n_bootstrap=-1)


# --- report ------------------------------------------------------------------------------------


def test_evaluate_predictions_and_report(tmp_path: Path) -> None:
    patients = ["a", "a", "b", "c", "c", "d", "e", "e", "f"]
    metrics = evaluate_predictions(
        labels=["normal"] * 3 + ["pneumonia"] * 3 + ["COVID-19"] * 3,
        probabilities=PROBS,
        patient_ids=patients,
        n_bootstrap=200,
        seed=4,
    )
    assert metrics["confusion_matrix"] == EXPECTED_CM
    assert metrics["n_images"] == 9 and metrics["n_patients"] == 6
    assert metrics["images_per_class"] == {"normal": 3, "pneumonia": 3, "COVID-19": 3}
    assert metrics["patients_per_class"] == {"normal": 2, "pneumonia": 2, "COVID-19": 2}
    assert list(metrics["sensitivity"].values()) == pytest.approx(EXPECTED_SENS)
    assert list(metrics["ppv"].values()) == pytest.approx(EXPECTED_PPV)
    m = metrics["metrics"]
    assert m["accuracy"]["value"] == pytest.approx(6 / 9)
    assert m["macro_f1"]["value"] == pytest.approx(EXPECTED_MACRO_F1)
    assert m["auc_COVID-19"]["value"] == pytest.approx(17 / 18)
    assert m["accuracy"]["n_resamples"] == 200
    assert 0.0 <= m["accuracy"]["ci_low"] <= 6 / 9 <= m["accuracy"]["ci_high"] <= 1.0
    assert metrics["bootstrap"] | {"method": None} == {
        "unit": "patient", "interval": "percentile", "n_bootstrap": 200, "seed": 4, "confidence": 0.95,
        "method": None,
    }
    # Same seed, same numbers.
    again = evaluate_predictions(
        labels=LABELS, probabilities=PROBS, patient_ids=patients, n_bootstrap=200, seed=4
    )
    assert again == metrics

    text = format_report(metrics)
    lines = text.splitlines()
    assert lines[1].split() == ["normal", "pneumonia", "COVID-19"]
    assert lines[2].split() == ["normal", "2", "1", "0"]
    assert "Sens Normal: 0.667, Pneumonia: 0.667, COVID-19: 0.667" in lines
    assert "PPV Normal: 0.667, Pneumonia 0.500, COVID-19: 1.000" in lines
    acc_line = next(line for line in lines if line.startswith("accuracy"))
    assert acc_line.split()[1] == "0.667"
    assert text.endswith(DISCLAIMER)

    path = write_metrics_json(tmp_path / "out" / "metrics.json", metrics)
    assert json.loads(path.read_text()) == json.loads(json.dumps(metrics))
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["metrics.json"]  # no partial files


def test_undefined_auc_is_null_in_json(tmp_path: Path) -> None:
    # No COVID-19 image at all: its AUC is undefined, recorded as null (strict JSON).
    metrics = evaluate_predictions(
        labels=[0, 0, 1, 1], probabilities=PROBS[[0, 1, 3, 4]], patient_ids=list("abcd"), n_bootstrap=50
    )
    undefined = {"value": None, "ci_low": None, "ci_high": None, "n_resamples": 0}
    assert metrics["metrics"]["auc_COVID-19"] == undefined
    loaded = json.loads(write_metrics_json(tmp_path / "m.json", metrics).read_text())
    assert loaded["metrics"]["macro_auc"]["value"] is None
    assert "n/a" in format_report(metrics)


# --- the metric table --------------------------------------------------------------------------


def test_one_new_table_entry_reaches_every_output(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """A metric added to evaluation.metrics.METRICS reaches metrics.json, both reports and the bootstrap."""
    from evaluation import metrics as table

    def mean_p_covid(stats: Statistics) -> np.ndarray:
        return stats.weights @ stats.probabilities[:, 2] / stats.weights.sum(axis=1)

    new = Metric("mean_p_covid", "mean P(COVID-19)", "mean P(COVID)", mean_p_covid, undefined_without=(2,))
    monkeypatch.setattr(table, "METRICS", (*table.METRICS, new))
    patients = ["a", "a", "b", "c", "c", "d", "e", "e", "f"]  # the COVID-19 images are patients e and f
    metrics = evaluate_predictions(labels=LABELS, probabilities=PROBS, patient_ids=patients, n_bootstrap=300)
    # 0.1 x 5 + 0.4 + 0.7 + 0.5 + 0.3 = 2.4 over 9 images
    m = metrics["metrics"]["mean_p_covid"]
    assert m["value"] == pytest.approx(2.4 / 9)
    # The bootstrap: each replicate is the mean over the resampled images; those without COVID-19 are skipped.
    counts = patient_bootstrap_counts(patients, n_bootstrap=300, seed=0)
    with_covid = counts[:, 6:].sum(axis=1) > 0
    assert 250 < with_covid.sum() < 300  # a resample misses both e and f with chance (4/6)^6 = 9%
    assert m["n_resamples"] == with_covid.sum()
    direct = [PROBS[np.repeat(np.arange(9), c), 2].mean() for c in counts[with_covid]]
    assert (m["ci_low"], m["ci_high"]) == pytest.approx(tuple(np.percentile(direct, [2.5, 97.5])))

    assert list(metrics["metrics"])[-1] == "mean_p_covid"
    stored = json.loads(write_metrics_json(tmp_path / "metrics.json", metrics).read_text())
    assert stored["metrics"]["mean_p_covid"] == m
    lines = format_report(metrics).splitlines()
    report_line = next(line for line in lines if line.startswith("mean P(COVID-19)"))
    assert report_line.split()[2:4] == ["0.267", f"[{m['ci_low']:.3f},"]

    predictions = [make_predictions(patient_ids=patients, filenames=[f"{i}.png" for i in range(9)],
                                    labels=LABELS, probabilities=PROBS, source=s) for s in ("x", "y")]
    comparison = compare_predictions(predictions=predictions, names=["x", "y"], n_bootstrap=300)
    frame = comparison_frame(comparison).set_index(["model", "metric"])
    assert frame.loc[("x", "mean_p_covid"), "value"] == pytest.approx(2.4 / 9)
    assert frame.loc[("y", "mean_p_covid"), "n_resamples"] == with_covid.sum()
    cell = f"0.267 [{m['ci_low']:.3f}, {m['ci_high']:.3f}]"
    assert f"| mean P(COVID) | {cell} | {cell} | {cell} |" in format_comparison(comparison)
    assert ("x", "auc_normal") not in frame.index  # entries with in_comparison=False stay out of it
