"""Calibration and threshold-free metrics in every evaluation: metrics.json, the table, the figures."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from data.labels import CLASSES
from evaluation.predictions import make_predictions
from evaluation.report import evaluate_predictions, format_report, write_evaluation_files

CALIBRATION_METRICS = ("brier", "ece", "ap_normal", "ap_pneumonia", "ap_COVID-19", "macro_ap")
# Four images, hand-computed below: labels normal, pneumonia, COVID-19, COVID-19.
LABELS = np.array([0, 1, 2, 2])
PROBS = np.array([[0.8, 0.1, 0.1],
                  [0.3, 0.6, 0.1],
                  [0.2, 0.2, 0.6],
                  [0.5, 0.1, 0.4]])


def test_point_values_equal_hand_computed_ones() -> None:
    metrics = evaluate_predictions(labels=LABELS, probabilities=PROBS, patient_ids=["a", "b", "c", "d"],
                                   n_bootstrap=0)["metrics"]
    # Brier: (0.04+0.01+0.01) + (0.09+0.16+0.01) + (0.04+0.04+0.16) + (0.25+0.01+0.36) = 1.18, / 4
    assert metrics["brier"]["value"] == pytest.approx(1.18 / 4)
    # ECE, 15 bins: confidences 0.8 (right), 0.6 (right), 0.6 (right), 0.5 (wrong: normal for COVID-19).
    # Bin (0.533, 0.6] holds both 0.6s (accuracy 1, confidence 0.6), (0.733, 0.8] the 0.8,
    # (0.467, 0.533] the 0.5.
    assert metrics["ece"]["value"] == pytest.approx((2 * 0.4 + 0.2 + 0.5) / 4)
    # AP COVID-19: scores 0.6 (pos), 0.4 (pos), 0.1, 0.1 -> both positives ranked first -> 1.0
    assert metrics["ap_COVID-19"]["value"] == pytest.approx(1.0)
    # AP normal: 0.8 (pos), 0.5 (neg), 0.3, 0.2 -> 1.0; AP pneumonia: 0.6 (pos) first -> 1.0
    assert metrics["ap_normal"]["value"] == pytest.approx(1.0)
    assert metrics["macro_ap"]["value"] == pytest.approx(1.0)


def test_every_evaluation_reports_them_with_intervals_and_figures(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    n = 90
    labels = np.arange(n) % 3
    logits = rng.normal(size=(n, 3)) + 1.5 * np.eye(3)[labels]
    probs = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    patients = [f"p{i // 2}" for i in range(n)]
    metrics = evaluate_predictions(labels=labels, probabilities=probs, patient_ids=patients, n_bootstrap=200,
                                   seed=1)
    for name in CALIBRATION_METRICS:
        m = metrics["metrics"][name]
        assert m["n_resamples"] == 200 and m["ci_low"] <= m["value"] <= m["ci_high"], (name, m)
    assert 0 < metrics["metrics"]["brier"]["value"] < 2 and 0 < metrics["metrics"]["ece"]["value"] < 1
    assert "15 equal-width confidence bins" in metrics["calibration"]["ece"]
    text = format_report(metrics)
    assert "ECE (top-label, 15 bins, lower is better)" in text and "average precision COVID-19" in text
    predictions = make_predictions(patient_ids=patients, filenames=[f"{i}.png" for i in range(n)],
                                   labels=[CLASSES[k] for k in labels], probabilities=probs)
    written = write_evaluation_files(tmp_path, predictions=predictions, metrics=metrics)
    for name in ("reliability_diagram.png", "pr_curves.png"):
        data = written[name].read_bytes()
        assert data.startswith(b"\x89PNG\r\n\x1a\n") and len(data) > 10_000
    stored = json.loads((tmp_path / "metrics.json").read_text())
    assert stored["metrics"]["macro_ap"] == metrics["metrics"]["macro_ap"]
