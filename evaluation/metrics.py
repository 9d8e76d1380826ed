"""Classification metrics for the three COVIDx classes, and the one table of every reported metric.

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
all replicates at once.

:data:`METRICS` is the table of every scalar metric the project reports: its
``metrics.json`` key, its labels in ``eval_keras.py``'s report and in
``compare.py``'s table, how it is computed from :class:`Statistics`, and when a
bootstrap resample leaves it undefined. ``metrics.json``, both reports and the
bootstrap read it, so a new metric is one entry. :func:`point_metrics` is every
entry on the images as given (ROC AUC from scikit-learn).
"""
from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Sequence

import numpy as np
from sklearn.metrics import confusion_matrix as _sk_confusion_matrix
from sklearn.metrics import roc_auc_score

from data.labels import CLASSES, NUM_CLASSES
from evaluation.calibration import ECE_BINS, average_precision_ovr, brier_score, expected_calibration_error


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


class Statistics:
    """What the metrics are computed from: ``n`` predictions under ``B`` per-image weightings.

    Each quantity is computed once, on first use, for all ``B`` rows together,
    so a table entry only pays for what it reads. ``weights`` ``(B, n)`` says how
    often each image counts (a bootstrap resample's counts, see
    :mod:`evaluation.bootstrap`); None is the plain estimate on the images as
    given (one row of ones, ROC AUC from scikit-learn).

    Attributes (``(B,)`` or ``(B, 3)`` arrays in :data:`data.labels.CLASSES` order):
        confusion: ``(B, 3, 3)`` weighted counts, rows true class, columns predicted.
        accuracy, precision, recall, f1: from the confusion matrices.
        roc_auc: one-vs-rest ROC AUC per class.
        brier, ece, average_precision: :mod:`evaluation.calibration`.
        absent: ``(B, 3)`` bool, the weighting holds no true image of the class.
    """

    def __init__(
        self, labels: np.ndarray, probabilities: np.ndarray, weights: np.ndarray | None = None
    ) -> None:
        self.labels = np.asarray(labels)
        self.probabilities = np.asarray(probabilities, dtype=np.float64)
        self.point = weights is None
        n = len(self.labels)
        self.weights = np.ones((1, n)) if weights is None else np.asarray(weights, dtype=np.float64)

    @functools.cached_property
    def confusion(self) -> np.ndarray:
        n = len(self.labels)
        cell = self.labels * NUM_CLASSES + np.argmax(self.probabilities, axis=1)
        onehot = np.zeros((n, NUM_CLASSES * NUM_CLASSES))
        onehot[np.arange(n), cell] = 1.0
        return (self.weights @ onehot).reshape(-1, NUM_CLASSES, NUM_CLASSES)

    @functools.cached_property
    def _rates(self) -> dict[str, np.ndarray]:
        return metrics_from_confusion(self.confusion)

    @property
    def accuracy(self) -> np.ndarray:
        return self._rates["accuracy"]

    @property
    def precision(self) -> np.ndarray:
        return self._rates["precision"]

    @property
    def recall(self) -> np.ndarray:
        return self._rates["recall"]

    @property
    def f1(self) -> np.ndarray:
        return self._rates["f1"]

    @property
    def absent(self) -> np.ndarray:
        return self.confusion.sum(axis=2) == 0

    @functools.cached_property
    def roc_auc(self) -> np.ndarray:
        if self.point:  # scikit-learn, the reference; the replicates are tested equal to it
            return roc_auc_ovr(self.labels, self.probabilities)[None, :]
        columns = [
            weighted_roc_auc(self.labels == k, self.probabilities[:, k], self.weights)
            for k in range(NUM_CLASSES)
        ]
        return np.stack(columns, axis=-1)

    @functools.cached_property
    def brier(self) -> np.ndarray:
        return brier_score(self.labels, self.probabilities, self.weights)

    @functools.cached_property
    def ece(self) -> np.ndarray:
        return expected_calibration_error(self.labels, self.probabilities, self.weights)

    @functools.cached_property
    def average_precision(self) -> np.ndarray:
        return average_precision_ovr(self.labels, self.probabilities, self.weights)


@dataclasses.dataclass(frozen=True)
class Metric:
    """One row of :data:`METRICS`.

    Attributes:
        name: the key in ``metrics.json`` and ``comparison.csv``.
        label: the row label of ``eval_keras.py``'s report.
        short_label: the row label of ``compare.py``'s table.
        compute: ``Statistics -> (B,)`` values; NaN where the metric is undefined.
        in_comparison: shown (and computed) by ``compare.py``.
        undefined_without: class indices; on a bootstrap resample that holds no true
            image of one of them the value is undefined, and the resample is skipped
            for this metric. The point estimate keeps the zero-division rule instead.
    """

    name: str
    label: str
    short_label: str
    compute: Callable[[Statistics], np.ndarray]
    in_comparison: bool = True
    undefined_without: tuple[int, ...] = ()


def _whole(statistic: str, stats: Statistics) -> np.ndarray:
    return getattr(stats, statistic)


def _of_class(statistic: str, k: int, stats: Statistics) -> np.ndarray:
    return getattr(stats, statistic)[:, k]


def _macro(statistic: str, stats: Statistics) -> np.ndarray:
    return getattr(stats, statistic).mean(axis=1)  # NaN when any class's value is


def _per_class(
    name: str, label: str, short_label: str, statistic: str, *, needs_class: bool = False,
    in_comparison: bool = True,
) -> tuple[Metric, ...]:
    """One entry per class; ``{c}`` in the texts is the class name."""
    return tuple(
        Metric(
            name=name.format(c=c),
            label=label.format(c=c),
            short_label=short_label.format(c=c),
            compute=functools.partial(_of_class, statistic, k),
            in_comparison=in_comparison,
            undefined_without=(k,) if needs_class else (),
        )
        for k, c in enumerate(CLASSES)
    )


ALL_CLASSES: tuple[int, ...] = tuple(range(NUM_CLASSES))

METRICS: tuple[Metric, ...] = (
    Metric("accuracy", "accuracy", "accuracy", functools.partial(_whole, "accuracy")),
    Metric("macro_f1", "macro F1", "macro F1", functools.partial(_macro, "f1"),
           undefined_without=ALL_CLASSES),
    *_per_class("precision_{c}", "precision (PPV) {c}", "precision {c}", "precision"),
    *_per_class("recall_{c}", "recall (sensitivity) {c}", "recall {c}", "recall", needs_class=True),
    *_per_class("f1_{c}", "F1 {c}", "F1 {c}", "f1", needs_class=True),
    *_per_class("auc_{c}", "ROC AUC {c} (one vs rest)", "ROC AUC {c}", "roc_auc", in_comparison=False),
    Metric("macro_auc", "macro ROC AUC", "macro ROC AUC", functools.partial(_macro, "roc_auc"),
           in_comparison=False),
    Metric("brier", "Brier score (multi-class, 0-2, lower is better)", "Brier score (lower is better)",
           functools.partial(_whole, "brier")),
    Metric("ece", f"ECE (top-label, {ECE_BINS} bins, lower is better)",
           f"ECE, {ECE_BINS} bins (lower is better)", functools.partial(_whole, "ece")),
    *_per_class("ap_{c}", "average precision {c} (one vs rest)", "average precision {c}",
                "average_precision"),
    Metric("macro_ap", "macro average precision", "macro average precision",
           functools.partial(_macro, "average_precision")),
)


def metric_table(*, comparison: bool = False) -> tuple[Metric, ...]:
    """The entries of :data:`METRICS`, in report order; ``comparison=True``: those ``compare.py`` shows.

    Everything that lists metrics calls this (rather than keeping its own copy of the
    table), so one new entry reaches ``metrics.json``, both reports and the bootstrap.
    """
    return tuple(m for m in METRICS if m.in_comparison or not comparison)


def metric_names(*, comparison: bool = False) -> list[str]:
    """Keys of :func:`point_metrics` and ``metrics.json``, in report order."""
    return [m.name for m in metric_table(comparison=comparison)]


def point_metrics(
    labels: np.ndarray, probabilities: np.ndarray, *, metrics: Sequence[Metric] | None = None
) -> dict[str, float]:
    """Each of ``metrics`` (default: :func:`metric_table`) on the images as given; prediction = argmax."""
    stats = Statistics(labels, probabilities)
    return {m.name: float(m.compute(stats)[0]) for m in (metric_table() if metrics is None else metrics)}
