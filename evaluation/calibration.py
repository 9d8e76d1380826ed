"""Calibration and threshold-free metrics: expected calibration error, Brier score, average precision.

Definitions (stated because papers use several):

- **Brier score**: the multi-class Brier score (Brier 1950), the mean over
  images of ``sum_k (p_k - y_k)^2`` with ``y`` the one-hot label; 0 is perfect,
  2 the worst possible (a sure, wrong prediction). Divide by 3 for the
  "mean over classes" convention some libraries report.
- **ECE**: top-label expected calibration error (Guo et al. 2017) with
  :data:`ECE_BINS` = 15 equal-width bins of the predicted class's probability
  (the confidence): bin ``m`` holds confidences in ``((m - 1) / 15, m / 15]``
  (a confidence of exactly 0 goes to the first bin). ECE is the
  image-weighted mean over the bins of ``|accuracy - mean confidence|``.
- **Average precision** (AUPRC) per class, one-vs-rest on that class's
  probability, as scikit-learn's ``average_precision_score``:
  ``sum_n (R_n - R_{n-1}) P_n`` over the distinct thresholds from high to
  low (tied scores form one threshold; no interpolation). Undefined (NaN)
  when the images hold no positive of the class.

Every function takes per-image ``weights`` of shape ``(B, n)`` (one row per
bootstrap replicate: how often each image occurs, see
:mod:`evaluation.bootstrap`) and returns ``(B, ...)``: with integer weights the
value equals the metric on the resampled images, and all replicates are
computed at once. Pass ``np.ones((1, n))`` for the plain estimate.
"""
from __future__ import annotations

import dataclasses

import numpy as np

from data.labels import NUM_CLASSES

ECE_BINS = 15


def _as_weights(weights: np.ndarray, n: int) -> np.ndarray:
    w = np.asarray(weights, dtype=np.float64)
    if w.ndim != 2 or w.shape[1] != n:
        raise ValueError(f"weights must have shape (replicates, {n}), received {w.shape}")
    if (w < 0).any():
        raise ValueError(f"weights must be >= 0 (counts of each image in a resample), received {w.min():g}")
    return w


def _weighted_mean(values: np.ndarray, w: np.ndarray) -> np.ndarray:
    total = w.sum(axis=1)
    out = np.full(w.shape[0], np.nan)
    np.divide(w @ values, total, out=out, where=total > 0)
    return out


def brier_score(labels: np.ndarray, probabilities: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Multi-class Brier score per replicate, ``(B,)``; NaN for a replicate without images."""
    p = np.asarray(probabilities, dtype=np.float64)
    onehot = np.eye(NUM_CLASSES)[np.asarray(labels, dtype=np.int64)]
    per_image = ((p - onehot) ** 2).sum(axis=1)
    return _weighted_mean(per_image, _as_weights(weights, len(per_image)))


def confidence_bins(confidence: np.ndarray, n_bins: int = ECE_BINS) -> np.ndarray:
    """The ECE bin (0 .. n_bins - 1) of each confidence: bin m holds ``(m / n_bins, (m + 1) / n_bins]``."""
    c = np.asarray(confidence, dtype=np.float64)
    return np.clip(np.ceil(c * n_bins).astype(np.int64) - 1, 0, n_bins - 1)


@dataclasses.dataclass(frozen=True)
class Reliability:
    """Per-bin statistics of the reliability diagram (weights summed per bin)."""

    edges: np.ndarray  # (n_bins + 1,)
    count: np.ndarray  # (B, n_bins) images per bin
    confidence: np.ndarray  # (B, n_bins) mean confidence, NaN for empty bins
    accuracy: np.ndarray  # (B, n_bins) accuracy, NaN for empty bins
    ece: np.ndarray  # (B,)


def reliability(labels: np.ndarray, probabilities: np.ndarray, weights: np.ndarray,
                n_bins: int = ECE_BINS) -> Reliability:
    """Reliability-diagram bins and top-label ECE of every replicate."""
    if n_bins < 1:
        raise ValueError(f"n_bins must be >= 1, received {n_bins}")
    p = np.asarray(probabilities, dtype=np.float64)
    labels = np.asarray(labels, dtype=np.int64)
    w = _as_weights(weights, len(labels))
    confidence = p.max(axis=1)
    correct = (p.argmax(axis=1) == labels).astype(np.float64)
    onehot_bins = np.eye(n_bins)[confidence_bins(confidence, n_bins)]  # (n, n_bins)
    count = w @ onehot_bins
    conf_sum = w @ (onehot_bins * confidence[:, None])
    correct_sum = w @ (onehot_bins * correct[:, None])
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_conf = np.where(count > 0, conf_sum / count, np.nan)
        accuracy = np.where(count > 0, correct_sum / count, np.nan)
    total = count.sum(axis=1)
    gaps = np.abs(correct_sum - conf_sum)  # = count * |accuracy - confidence| per bin
    ece = np.full(w.shape[0], np.nan)
    np.divide(gaps.sum(axis=1), total, out=ece, where=total > 0)
    return Reliability(edges=np.linspace(0.0, 1.0, n_bins + 1), count=count, confidence=mean_conf,
                       accuracy=accuracy, ece=ece)


def expected_calibration_error(labels: np.ndarray, probabilities: np.ndarray, weights: np.ndarray,
                               n_bins: int = ECE_BINS) -> np.ndarray:
    """Top-label ECE per replicate, ``(B,)`` (see the module docstring for the binning)."""
    return reliability(labels, probabilities, weights, n_bins).ece


def weighted_average_precision(positive: np.ndarray, scores: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Average precision of one binary problem under many per-image weightings, ``(B,)``.

    Equals ``sklearn.metrics.average_precision_score(positive, scores,
    sample_weight=w)`` for each row ``w``; NaN where a row gives no weight to
    positives.
    """
    positive = np.asarray(positive, dtype=bool)
    scores = np.asarray(scores, dtype=np.float64)
    w = _as_weights(weights, len(scores))
    order = np.argsort(-scores, kind="stable")
    sorted_scores = scores[order]
    # One threshold per distinct score, highest first; ties are counted together.
    starts = np.flatnonzero(np.r_[True, sorted_scores[1:] != sorted_scores[:-1]])
    w = w[:, order]
    pos = positive[order]
    tp = np.cumsum(np.add.reduceat(w * pos, starts, axis=1), axis=1)
    fp = np.cumsum(np.add.reduceat(w * ~pos, starts, axis=1), axis=1)
    total_pos = tp[:, -1:]
    with np.errstate(invalid="ignore", divide="ignore"):
        precision = np.where(tp + fp > 0, tp / (tp + fp), 0.0)
        recall = np.where(total_pos > 0, tp / total_pos, np.nan)
    recall_step = np.diff(np.concatenate([np.zeros((w.shape[0], 1)), recall], axis=1), axis=1)
    ap = (recall_step * precision).sum(axis=1)
    return np.where(total_pos[:, 0] > 0, ap, np.nan)


def average_precision_ovr(labels: np.ndarray, probabilities: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """One-vs-rest average precision per class, ``(B, 3)``."""
    labels = np.asarray(labels, dtype=np.int64)
    p = np.asarray(probabilities, dtype=np.float64)
    return np.stack([weighted_average_precision(labels == k, p[:, k], weights) for k in range(NUM_CLASSES)],
                    axis=-1)


CALIBRATION_METHOD = {
    "brier": "multi-class Brier score: mean over images of sum_k (p_k - y_k)^2; 0 best, 2 worst",
    "ece": f"top-label expected calibration error, {ECE_BINS} equal-width confidence bins "
           "((m-1)/15, m/15], image-weighted mean |accuracy - confidence|",
    "average_precision": "one-vs-rest average precision per class (scikit-learn's average_precision_score, "
                         "no interpolation); macro_ap is their mean",
}
