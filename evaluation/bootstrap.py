"""Patient-level (cluster) bootstrap confidence intervals.

Images of one patient are not independent (COVIDx has patients with tens of
images, and the COVID-19 test class is only ~46 images), so an image-level
bootstrap understates the uncertainty. Each replicate therefore draws as many
patients as the test set has, uniformly **with replacement**, and takes **all**
images of every drawn patient (a patient drawn twice contributes its images
twice). That is represented as a count per image: how many times it occurs in
the replicate; all images of a patient always share the same count.

The interval is the percentile interval: the ``(1 - confidence) / 2`` and
``(1 + confidence) / 2`` quantiles (numpy's linear interpolation) of the
replicate values. Draws come from ``numpy.random.default_rng(seed)`` and depend
only on the seed and the patient ids, so every model evaluated on the same
images with the same seed sees the same resamples (paired comparison).

A replicate in which a metric is undefined is skipped **for that metric only**
and ``n_resamples`` reports how many were used: that is the case for a class's
recall, F1, ROC AUC and average precision when the resample holds no image of
the class (and for AUC also when it holds only that class), and for macro F1 /
macro AUC / macro average precision when any class's value is undefined
(:attr:`evaluation.metrics.Metric.undefined_without`). Precision keeps the
point-estimate convention (0 when nothing is predicted as the class), because
it is defined on every resample that holds images. Which metrics exist, and how
each is computed on all replicates at once, is :data:`evaluation.metrics.METRICS`.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from evaluation.metrics import Metric, Statistics, metric_table, point_metrics

DEFAULT_N_BOOTSTRAP = 2000
DEFAULT_SEED = 0
DEFAULT_CONFIDENCE = 0.95
# Replicates are processed in blocks so a (replicates x images) float matrix stays small.
_BLOCK = 256


def check_bootstrap_settings(*, n_bootstrap: int, confidence: float) -> None:
    """``ValueError`` naming the setting when ``n_bootstrap`` or ``confidence`` is unusable."""
    if int(n_bootstrap) != n_bootstrap or n_bootstrap < 0:
        raise ValueError(f"n_bootstrap must be a whole number >= 0, received {n_bootstrap}")
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be between 0 and 1 (e.g. 0.95), received {confidence}")


def patient_bootstrap_counts(
    patient_ids: Sequence[str] | np.ndarray, *, n_bootstrap: int, seed: int
) -> np.ndarray:
    """How often each image occurs in each patient-level bootstrap resample.

    Args:
        patient_ids: ``(n,)`` one id per image; equal ids are one patient.
        n_bootstrap: number of resamples ``B``.
        seed: seed for ``numpy.random.default_rng``.

    Returns:
        ``(B, n)`` int64; row ``b`` holds, for every image, the number of times its
        patient was drawn in resample ``b``. Rows sum over patients to the number of patients.
    """
    _, codes = np.unique(np.asarray(patient_ids, dtype=str), return_inverse=True)
    n_patients = int(codes.max()) + 1
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, n_patients, size=(n_bootstrap, n_patients))
    offsets = np.arange(n_bootstrap)[:, None] * n_patients
    per_patient = np.bincount((draws + offsets).ravel(), minlength=n_bootstrap * n_patients)
    return per_patient.reshape(n_bootstrap, n_patients)[:, codes.ravel()]


def replicate_metrics(
    *,
    labels: np.ndarray,
    probabilities: np.ndarray,
    counts: np.ndarray,
    metrics: Sequence[Metric] | None = None,
) -> dict[str, np.ndarray]:
    """Each of ``metrics`` (default: :func:`evaluation.metrics.metric_table`) on every resample, ``(B,)``.

    ``counts`` is :func:`patient_bootstrap_counts` (or any ``(B, n)`` integer
    weights); values that are undefined on a resample are NaN (module docstring).
    """
    labels = np.asarray(labels)
    probabilities = np.asarray(probabilities, dtype=np.float64)
    metrics = metric_table() if metrics is None else tuple(metrics)
    out = {m.name: np.empty(len(counts)) for m in metrics}
    for start in range(0, len(counts), _BLOCK):
        stats = Statistics(labels, probabilities, counts[start : start + _BLOCK])
        for m in metrics:
            values = m.compute(stats)
            if m.undefined_without:
                values = np.where(stats.absent[:, list(m.undefined_without)].any(axis=1), np.nan, values)
            out[m.name][start : start + len(values)] = values
    return out


def percentile_interval(values: np.ndarray, *, confidence: float) -> tuple[float | None, float | None, int]:
    """``(low, high, n_used)`` percentile interval of the non-NaN ``values``; ``None`` bounds if none."""
    values = np.asarray(values, dtype=np.float64)
    used = values[~np.isnan(values)]
    if used.size == 0:
        return None, None, 0
    tail = 100.0 * (1.0 - confidence) / 2.0
    low, high = np.percentile(used, [tail, 100.0 - tail])
    return float(low), float(high), int(used.size)


def estimate(value: float, replicates: np.ndarray, *, confidence: float) -> dict[str, float | int | None]:
    """The JSON-ready record of one metric: ``value``, ``ci_low``, ``ci_high``, ``n_resamples``."""
    low, high, used = percentile_interval(replicates, confidence=confidence)
    return {
        "value": None if np.isnan(value) else float(value),
        "ci_low": low,
        "ci_high": high,
        "n_resamples": used,
    }


def metrics_with_ci(
    *,
    labels: np.ndarray,
    probabilities: np.ndarray,
    patient_ids: Sequence[str] | np.ndarray,
    n_bootstrap: int = DEFAULT_N_BOOTSTRAP,
    seed: int = DEFAULT_SEED,
    confidence: float = DEFAULT_CONFIDENCE,
    metrics: Sequence[Metric] | None = None,
) -> dict[str, dict[str, float | int | None]]:
    """Point value and patient-bootstrap percentile interval of every metric.

    Args:
        labels: ``(n,)`` true class indices.
        probabilities: ``(n, 3)`` class probabilities (prediction = argmax).
        patient_ids: ``(n,)`` the resampling unit; pass one distinct id per image
            for an image-level bootstrap.
        n_bootstrap: resamples (0 gives no interval).
        seed: seed of the resampling.
        confidence: e.g. 0.95 for a 95% interval.
        metrics: entries of :data:`evaluation.metrics.METRICS` (default: all of
            :func:`evaluation.metrics.metric_table`).

    Returns:
        ``{metric name: {"value", "ci_low", "ci_high", "n_resamples"}}`` in the
        order of ``metrics``; undefined values are ``None``.
    """
    check_bootstrap_settings(n_bootstrap=n_bootstrap, confidence=confidence)
    labels = np.asarray(labels)
    probabilities = np.asarray(probabilities, dtype=np.float64)
    metrics = metric_table() if metrics is None else tuple(metrics)
    point = point_metrics(labels, probabilities, metrics=metrics)
    counts = patient_bootstrap_counts(patient_ids, n_bootstrap=n_bootstrap, seed=seed)
    reps = replicate_metrics(labels=labels, probabilities=probabilities, counts=counts, metrics=metrics)
    return {name: estimate(point[name], reps[name], confidence=confidence) for name in point}
