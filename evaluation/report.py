"""Everything ``metrics.json`` holds, in one call, and the report ``eval_keras.py`` prints.

Typical use (framework code produces the arrays)::

    preds = make_predictions(patient_ids=..., filenames=..., labels=..., probabilities=softmax)
    metrics = evaluate_predictions(labels=preds.labels, probabilities=preds.probabilities,
                                   patient_ids=preds.patient_ids, n_bootstrap=2000, seed=0)
    print(format_report(metrics))
    write_evaluation_files(out_dir, predictions=preds, metrics=metrics)
"""
from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from common.disclaimer import DISCLAIMER
from common.fsutil import atomic_write_text
from data.labels import CLASSES
from evaluation.bootstrap import (
    DEFAULT_CONFIDENCE,
    DEFAULT_N_BOOTSTRAP,
    DEFAULT_SEED,
    metrics_with_ci,
)
from evaluation.calibration import CALIBRATION_METHOD
from evaluation.metrics import confusion_matrix, metric_table, sensitivity_ppv
from evaluation.predictions import Predictions, as_label_indices, save_predictions

BOOTSTRAP_METHOD = (
    "patient-level (cluster) bootstrap: each resample draws as many patients as the test set has, "
    "with replacement, and takes all their images; percentile interval; a resample on which a metric "
    "is undefined is skipped for that metric (n_resamples counts the ones used)"
)

METRICS_JSON = "metrics.json"
PREDICTIONS_CSV = "predictions.csv"
CONFUSION_PNG = "confusion_matrix.png"
ROC_PNG = "roc_curves.png"
RELIABILITY_PNG = "reliability_diagram.png"
PR_PNG = "pr_curves.png"


def surfsara_lines(confusion: np.ndarray) -> tuple[str, str]:
    """SURFsara's (COVID-Net's) two summary lines, character for character.

    Their PPV line has no colon after "Pneumonia"; it is kept so logs can be diffed.
    """
    sens, ppv = sensitivity_ppv(confusion)
    return (
        "Sens Normal: {:.3f}, Pneumonia: {:.3f}, COVID-19: {:.3f}".format(*sens),
        "PPV Normal: {:.3f}, Pneumonia {:.3f}, COVID-19: {:.3f}".format(*ppv),
    )


def evaluate_predictions(
    *,
    labels: Sequence[int] | Sequence[str] | np.ndarray,
    probabilities: np.ndarray,
    patient_ids: Sequence[str] | np.ndarray,
    n_bootstrap: int = DEFAULT_N_BOOTSTRAP,
    seed: int = DEFAULT_SEED,
    confidence: float = DEFAULT_CONFIDENCE,
) -> dict[str, Any]:
    """Compute everything ``metrics.json`` holds; returns a plain JSON-ready dict.

    Args:
        labels: true classes (indices or names from :data:`data.labels.CLASSES`).
        probabilities: ``(n, 3)`` softmax outputs in class order; prediction = argmax.
        patient_ids: bootstrap unit, one per image (unique per patient across sources).
        n_bootstrap: patient resamples for the intervals (default 2000; 0 = no intervals).
        seed: seed of the resampling.
        confidence: interval level (default 0.95).

    Returns:
        ``classes``, ``n_images``, ``n_patients``, ``images_per_class``,
        ``patients_per_class``, ``confusion_matrix`` (rows true, columns predicted),
        ``sensitivity`` and ``ppv`` (SURFsara's point values per class),
        ``metrics`` (``{name: {value, ci_low, ci_high, n_resamples}}`` for every
        entry of :data:`evaluation.metrics.METRICS`), ``calibration`` (how the
        calibration metrics are defined) and ``bootstrap`` (the settings and
        method). Undefined values are ``None``.
    """
    label_idx, probs, pids = _checked_inputs(labels, probabilities, patient_ids)
    cm = confusion_matrix(label_idx, np.argmax(probs, axis=1))
    sens, ppv = sensitivity_ppv(cm)
    with_ci = metrics_with_ci(
        labels=label_idx,
        probabilities=probs,
        patient_ids=pids,
        n_bootstrap=n_bootstrap,
        seed=seed,
        confidence=confidence,
    )
    return {
        "classes": list(CLASSES),
        **_counts(label_idx, pids),
        "confusion_matrix": cm.tolist(),
        "confusion_matrix_axes": "rows: true class, columns: predicted class, both in 'classes' order",
        "sensitivity": {c: float(v) for c, v in zip(CLASSES, sens)},
        "ppv": {c: float(v) for c, v in zip(CLASSES, ppv)},
        "metrics": with_ci,
        "calibration": CALIBRATION_METHOD,
        "bootstrap": {
            "unit": "patient",
            "interval": "percentile",
            "n_bootstrap": int(n_bootstrap),
            "seed": int(seed),
            "confidence": float(confidence),
            "method": BOOTSTRAP_METHOD,
        },
    }


def _checked_inputs(
    labels: Sequence[int] | Sequence[str] | np.ndarray,
    probabilities: np.ndarray,
    patient_ids: Sequence[str] | np.ndarray,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Label indices, float64 probabilities and str patient ids, checked to describe the same images."""
    label_idx = as_label_indices(labels)
    probs = np.asarray(probabilities, dtype=np.float64)
    pids = np.asarray([str(p) for p in patient_ids])
    if not len(label_idx) == len(probs) == len(pids) or probs.ndim != 2 or probs.shape[1] != len(CLASSES):
        raise ValueError(
            f"labels, probabilities and patient_ids must describe the same n images with {len(CLASSES)} "
            f"probabilities each; received {len(label_idx)} labels, probabilities of shape {probs.shape} "
            f"and {len(pids)} patient_ids"
        )
    return label_idx, probs, pids


def _counts(label_idx: np.ndarray, pids: np.ndarray) -> dict[str, Any]:
    """Images and patients, in all and per class."""
    return {
        "n_images": int(len(label_idx)),
        "n_patients": int(len(np.unique(pids))),
        "images_per_class": {c: int((label_idx == k).sum()) for k, c in enumerate(CLASSES)},
        "patients_per_class": {c: int(len(np.unique(pids[label_idx == k]))) for k, c in enumerate(CLASSES)},
    }


def format_confusion_matrix(confusion: Sequence[Sequence[int]] | np.ndarray) -> str:
    """The matrix as a labelled text table (rows true, columns predicted)."""
    cm = np.asarray(confusion, dtype=np.int64)
    width = max(max(len(c) for c in CLASSES), len(str(cm.max())))
    lines = ["Confusion matrix (rows: true class, columns: predicted class)"]
    lines.append(" " * (width + 2) + "  ".join(f"{c:>{width}}" for c in CLASSES))
    for name, row in zip(CLASSES, cm):
        lines.append(f"{name:<{width}}  " + "  ".join(f"{v:>{width}d}" for v in row))
    return "\n".join(lines)


def _fmt(value: float | None) -> str:
    return "  n/a" if value is None else f"{value:.3f}"


def format_ci_table(metrics: dict[str, dict[str, Any]], *, confidence: float) -> str:
    """One line per table metric (:data:`evaluation.metrics.METRICS`) in ``metrics``: value, CI, resamples."""
    rows = [(m.label, metrics[m.name]) for m in metric_table() if m.name in metrics]
    width = max(len(label) for label, _ in rows)
    pct = f"{confidence:.0%}"
    lines = [f"{'metric':<{width}}  value  {pct + ' CI':<14}  resamples"]
    for label, m in rows:
        interval = "[  n/a,   n/a]" if m["ci_low"] is None else f"[{m['ci_low']:.3f}, {m['ci_high']:.3f}]"
        lines.append(f"{label:<{width}}  {_fmt(m['value'])}  {interval}  {m['n_resamples']:>9d}")
    return "\n".join(lines)


def format_report(metrics: dict[str, Any], *, disclaimer: bool = True) -> str:
    """The text ``eval_keras.py`` prints: matrix, SURFsara's two lines, then the metrics with CIs.

    Ends with :data:`common.disclaimer.DISCLAIMER` unless ``disclaimer=False``.
    """
    boot = metrics["bootstrap"]
    sens_line, ppv_line = surfsara_lines(np.asarray(metrics["confusion_matrix"]))
    parts = [
        format_confusion_matrix(metrics["confusion_matrix"]),
        sens_line,
        ppv_line,
        "",
        f"{metrics['n_images']} images of {metrics['n_patients']} patients; "
        f"{boot['confidence']:.0%} confidence intervals from a patient-level bootstrap "
        f"({boot['n_bootstrap']} resamples, percentile interval, seed {boot['seed']})",
        format_ci_table(metrics["metrics"], confidence=boot["confidence"]),
    ]
    if disclaimer:
        parts += ["", DISCLAIMER]
    return "\n".join(parts)


def write_metrics_json(path: str | os.PathLike[str], metrics: dict[str, Any]) -> Path:
    """Write ``metrics`` as indented JSON (strict: no NaN) atomically; return the path."""
    text = json.dumps(metrics, indent=2, allow_nan=False) + "\n"
    return atomic_write_text(path, text)


def write_evaluation_files(
    out_dir: str | os.PathLike[str], *, predictions: Predictions, metrics: dict[str, Any]
) -> dict[str, Path]:
    """Write ``metrics.json``, ``predictions.csv`` and the figures (confusion matrix, ROC, reliability, PR).

    Each file is written atomically into ``out_dir`` (created if needed).
    Returns ``{file name: path}``.
    """
    # Imported here so computing metrics never pays for (or depends on) matplotlib.
    from evaluation.plots import (
        write_confusion_matrix_png,
        write_pr_png,
        write_reliability_png,
        write_roc_png,
    )

    out = Path(out_dir)
    return {
        METRICS_JSON: write_metrics_json(out / METRICS_JSON, metrics),
        PREDICTIONS_CSV: save_predictions(out / PREDICTIONS_CSV, predictions),
        CONFUSION_PNG: write_confusion_matrix_png(
            out / CONFUSION_PNG, confusion=np.asarray(metrics["confusion_matrix"])
        ),
        ROC_PNG: write_roc_png(
            out / ROC_PNG, labels=predictions.labels, probabilities=predictions.probabilities
        ),
        RELIABILITY_PNG: write_reliability_png(
            out / RELIABILITY_PNG, labels=predictions.labels, probabilities=predictions.probabilities
        ),
        PR_PNG: write_pr_png(
            out / PR_PNG, labels=predictions.labels, probabilities=predictions.probabilities
        ),
    }
