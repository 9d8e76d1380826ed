"""Classification metrics for the three COVIDx classes.

Conventions (SURFsara's ``eval``, which follows COVID-Net's):

- confusion matrix rows are the true class, columns the predicted class, both
  in :data:`data.labels.CLASSES` order;
- sensitivity (recall) = diagonal / row sum, PPV (precision) = diagonal /
  column sum, F1 = 2 TP / (2 TP + FP + FN); each is 0 when its denominator is
  0 (scikit-learn's ``zero_division=0``);
- ROC AUC is one-vs-rest per class on that class's probability; it is
  undefined (NaN) when the images hold no positive or no negative of the class.

:func:`metrics_from_confusion` and :func:`weighted_roc_auc` work on a stack of
confusion matrices / a matrix of per-image weights, so the bootstrap computes
all replicates at once; :func:`point_metrics` is the plain single-estimate
version built on scikit-learn.
"""
from __future__ import annotations

import numpy as np
from sklearn.metrics import confusion_matrix as _sk_confusion_matrix
from sklearn.metrics import roc_auc_score

from data.labels import CLASSES, NUM_CLASSES


def confusion_matrix(labels: np.ndarray, predicted: np.ndarray) -> np.ndarray:
    """``(3, 3)`` int64 counts; rows = true class, columns = predicted class."""
    return _sk_confusion_matrix(labels, predicted, labels=list(range(NUM_CLASSES))).astype(np.int64)


def _safe_divide(numerator: np.ndarray, denominator: np.ndarray) -> np.ndarray:
    numerator = np.asarray(numerator, dtype=np.float64)
    denominator = np.asarray(denominator, dtype=np.float64)
    out = np.zeros(np.broadcast(numerator, denominator).shape, dtype=np.float64)
    return np.divide(numerator, denominator, out=out, where=denominator > 0)


def metrics_from_confusion(confusion: np.ndarray) -> dict[str, np.ndarray]:
    """Accuracy, per-class precision/recall/F1, macro F1 and support from confusion matrices.

    Args:
        confusion: ``(..., 3, 3)`` counts (any leading axes, e.g. bootstrap replicates).

    Returns:
        ``accuracy`` and ``macro_f1`` with shape ``(...)``; ``precision``,
        ``recall``, ``f1`` and ``support`` (true images per class) with shape ``(..., 3)``.
    """
    cm = np.asarray(confusion, dtype=np.float64)
    tp = np.diagonal(cm, axis1=-2, axis2=-1)
    row = cm.sum(axis=-1)  # true images per class
    col = cm.sum(axis=-2)  # predicted images per class
    f1 = _safe_divide(2.0 * tp, row + col)
    return {
        "accuracy": _safe_divide(tp.sum(axis=-1), cm.sum(axis=(-2, -1))),
        "precision": _safe_divide(tp, col),
        "recall": _safe_divide(tp, row),
        "f1": f1,
        "macro_f1": f1.mean(axis=-1),
        "support": row,
    }


def sensitivity_ppv(confusion: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """SURFsara's per-class sensitivity and PPV (``(3,)`` each) from one confusion matrix."""
    m = metrics_from_confusion(confusion)
    return m["recall"], m["precision"]


def roc_auc_ovr(labels: np.ndarray, probabilities: np.ndarray) -> np.ndarray:
    """One-vs-rest ROC AUC per class, ``(3,)``; NaN for a class with no positives or no negatives."""
    labels = np.asarray(labels)
    aucs = np.full(NUM_CLASSES, np.nan)
    for k in range(NUM_CLASSES):
        positive = labels == k
        if positive.any() and not positive.all():
            aucs[k] = roc_auc_score(positive, probabilities[:, k])
    return aucs


def weighted_roc_auc(positive: np.ndarray, scores: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """ROC AUC of one binary problem under many per-image weightings at once.

    With integer weights (how often each image occurs in a bootstrap
    resample) this equals ``roc_auc_score`` on the resampled images: the
    Mann-Whitney statistic, ties counted one half. scikit-learn costs ~1 ms a
    call, i.e. seconds for 2000 replicates x 3 classes; this is one sort plus
    cumulative sums over all replicates.

    Args:
        positive: ``(n,)`` bool, image belongs to the class.
        scores: ``(n,)`` the class probability.
        weights: ``(B, n)`` non-negative weights, one row per replicate.

    Returns:
        ``(B,)`` AUCs; NaN where a row gives no weight to positives or to negatives.
    """
    positive = np.asarray(positive, dtype=bool)
    order = np.argsort(scores, kind="stable")
    sorted_scores = np.asarray(scores)[order]
    starts = np.flatnonzero(np.r_[True, sorted_scores[1:] != sorted_scores[:-1]])  # tied-score groups
    w = np.asarray(weights, dtype=np.float64)[:, order]
    pos = positive[order]
    pos_weight = np.add.reduceat(w * pos, starts, axis=1)
    neg_weight = np.add.reduceat(w * ~pos, starts, axis=1)
    neg_below = np.cumsum(neg_weight, axis=1) - neg_weight
    wins = (pos_weight * (neg_below + 0.5 * neg_weight)).sum(axis=1)
    pairs = pos_weight.sum(axis=1) * neg_weight.sum(axis=1)
    out = np.full(w.shape[0], np.nan)
    np.divide(wins, pairs, out=out, where=pairs > 0)
    return out


def metric_names(*, include_auc: bool = True) -> list[str]:
    """Keys of :func:`flat_metrics`, in report order."""
    names = ["accuracy", "macro_f1"]
    for kind in ("precision", "recall", "f1"):
        names += [f"{kind}_{c}" for c in CLASSES]
    if include_auc:
        names += [f"auc_{c}" for c in CLASSES] + ["macro_auc"]
    return names


def flat_metrics(confusion: np.ndarray, aucs: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """One entry per scalar metric (names from :func:`metric_names`), keeping leading axes.

    ``aucs`` (``(..., 3)``) adds ``auc_<class>`` and ``macro_auc`` (NaN if any class's AUC is).
    """
    m = metrics_from_confusion(confusion)
    out: dict[str, np.ndarray] = {"accuracy": m["accuracy"], "macro_f1": m["macro_f1"]}
    for kind in ("precision", "recall", "f1"):
        for k, c in enumerate(CLASSES):
            out[f"{kind}_{c}"] = m[kind][..., k]
    if aucs is not None:
        for k, c in enumerate(CLASSES):
            out[f"auc_{c}"] = aucs[..., k]
        out["macro_auc"] = aucs.mean(axis=-1)
    return out


def point_metrics(
    labels: np.ndarray, probabilities: np.ndarray, *, include_auc: bool = True
) -> dict[str, float]:
    """Every scalar metric of :func:`metric_names` on the given images (argmax predictions)."""
    cm = confusion_matrix(labels, np.argmax(probabilities, axis=1))
    aucs = roc_auc_ovr(labels, probabilities) if include_auc else None
    return {name: float(value) for name, value in flat_metrics(cm, aucs).items()}
