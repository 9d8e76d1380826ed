"""Confusion-matrix, ROC, reliability-diagram and precision-recall figures, written as PNG.

Uses matplotlib's object-oriented API with an explicit Agg canvas: no pyplot,
no global figure registry, no ``matplotlib.use()``, so importing or calling this
never changes the backend or state of the program that uses it (a notebook, a
training script). Figures are built by ``*_figure`` functions (testable
objects) and written through :func:`save_figure`, atomically.
"""
from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from sklearn.metrics import average_precision_score, precision_recall_curve, roc_auc_score, roc_curve

from common.fsutil import atomic_path
from data.labels import CLASSES

DEFAULT_DPI = 150


def confusion_matrix_figure(
    confusion: np.ndarray, *, class_names: Sequence[str] = CLASSES, title: str = "Confusion matrix"
) -> Figure:
    """Heat map of the counts, each cell annotated with its count and its share of the row.

    Rows are the true class, columns the predicted class. Colour encodes the
    row share (sensitivity on the diagonal), so a small class such as COVID-19
    is as readable as a large one.
    """
    cm = np.asarray(confusion, dtype=np.int64)
    row_sums = cm.sum(axis=1, keepdims=True)
    share = np.divide(cm, row_sums, out=np.zeros(cm.shape), where=row_sums > 0)
    fig = Figure(figsize=(5.0, 4.4), layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    image = ax.imshow(share, cmap="Blues", vmin=0.0, vmax=1.0)
    fig.colorbar(image, ax=ax, label="share of true class")
    ticks = np.arange(len(class_names))
    ax.set_xticks(ticks, labels=list(class_names))
    ax.set_yticks(ticks, labels=list(class_names))
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    ax.set_title(title)
    for i in range(cm.shape[0]):
        for j in range(cm.shape[1]):
            colour = "white" if share[i, j] > 0.5 else "black"
            ax.text(j, i, f"{cm[i, j]}\n{share[i, j]:.1%}", ha="center", va="center", color=colour)
    return fig


def roc_figure(
    *,
    labels: np.ndarray,
    probabilities: np.ndarray,
    class_names: Sequence[str] = CLASSES,
    title: str = "ROC curves (one vs rest)",
) -> Figure:
    """One-vs-rest ROC curve per class with its AUC in the legend.

    A class whose AUC is undefined (no positive or no negative image) is
    listed in the legend as "not defined" and has no curve.
    """
    labels = np.asarray(labels)
    fig = Figure(figsize=(5.0, 5.0), layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    ax.plot([0, 1], [0, 1], linestyle="--", color="grey", linewidth=1, label="chance")
    for k, name in enumerate(class_names):
        positive = labels == k
        if positive.any() and not positive.all():
            fpr, tpr, _ = roc_curve(positive, probabilities[:, k])
            auc = roc_auc_score(positive, probabilities[:, k])
            ax.plot(fpr, tpr, linewidth=1.5, label=f"{name} (AUC {auc:.3f})")
        else:
            ax.plot([], [], label=f"{name} (AUC not defined)")
    ax.set_xlim(0.0, 1.0)
    ax.set_ylim(0.0, 1.01)
    ax.set_aspect("equal")
    ax.set_xlabel("false positive rate (1 - specificity)")
    ax.set_ylabel("true positive rate (sensitivity)")
    ax.set_title(title)
    ax.legend(loc="lower right")
    return fig


def save_figure(figure: Figure, path: str | os.PathLike[str], *, dpi: int = DEFAULT_DPI) -> Path:
    """Write ``figure`` as PNG to ``path`` atomically and return the path."""
    FigureCanvasAgg(figure)  # a Figure built elsewhere may carry another canvas
    with atomic_path(path) as tmp:
        figure.savefig(tmp, format="png", dpi=dpi)
    return Path(path)


def write_confusion_matrix_png(
    path: str | os.PathLike[str], *, confusion: np.ndarray, dpi: int = DEFAULT_DPI
) -> Path:
    """:func:`confusion_matrix_figure` saved to ``path``."""
    return save_figure(confusion_matrix_figure(confusion), path, dpi=dpi)


def write_roc_png(
    path: str | os.PathLike[str], *, labels: np.ndarray, probabilities: np.ndarray, dpi: int = DEFAULT_DPI
) -> Path:
    """:func:`roc_figure` saved to ``path``."""
    return save_figure(roc_figure(labels=labels, probabilities=probabilities), path, dpi=dpi)


def reliability_figure(
    *, labels: np.ndarray, probabilities: np.ndarray, title: str = "Reliability diagram (top label)"
) -> Figure:
    """Accuracy against mean confidence per confidence bin (:data:`evaluation.calibration.ECE_BINS`).

    Bars are the bins' accuracy, drawn over the bin's width; the diagonal is
    perfect calibration; the number of images per bin is written above each
    bar and the ECE is in the title.
    """
    from evaluation.calibration import reliability

    labels = np.asarray(labels)
    bins = reliability(labels, probabilities, np.ones((1, len(labels))))
    edges, count, accuracy, confidence = bins.edges, bins.count[0], bins.accuracy[0], bins.confidence[0]
    fig = Figure(figsize=(5.0, 5.0), layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    ax.plot([0, 1], [0, 1], linestyle="--", color="grey", linewidth=1, label="perfect calibration")
    filled = count > 0
    widths = np.diff(edges)
    ax.bar(edges[:-1][filled], accuracy[filled], width=widths[filled], align="edge", edgecolor="black",
           alpha=0.7, label="accuracy in bin")
    ax.plot(confidence[filled], accuracy[filled], "o", color="black", markersize=3, label="mean confidence")
    for left, width, acc, n in zip(edges[:-1][filled], widths[filled], accuracy[filled], count[filled]):
        ax.text(left + width / 2, min(acc + 0.02, 0.97), f"{int(n)}", ha="center", fontsize=7)
    ax.set_xlim(0.0, 1.0)
    ax.set_ylim(0.0, 1.0)
    ax.set_aspect("equal")
    ax.set_xlabel("confidence (probability of the predicted class)")
    ax.set_ylabel("accuracy")
    ax.set_title(f"{title}\nECE {bins.ece[0]:.3f} ({len(count)} equal-width bins)")
    ax.legend(loc="upper left")
    return fig


def pr_figure(
    *,
    labels: np.ndarray,
    probabilities: np.ndarray,
    class_names: Sequence[str] = CLASSES,
    title: str = "Precision-recall curves (one vs rest)",
) -> Figure:
    """One-vs-rest precision-recall curve per class with its average precision; prevalence as a line."""
    labels = np.asarray(labels)
    fig = Figure(figsize=(5.0, 5.0), layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    for k, name in enumerate(class_names):
        positive = labels == k
        if positive.any():
            precision, recall, _ = precision_recall_curve(positive, probabilities[:, k])
            ap = average_precision_score(positive, probabilities[:, k])
            line = ax.step(recall, precision, where="post", linewidth=1.5, label=f"{name} (AP {ap:.3f})")[0]
            ax.axhline(positive.mean(), linestyle=":", linewidth=1, color=line.get_color())
        else:
            ax.plot([], [], label=f"{name} (AP not defined)")
    ax.set_xlim(0.0, 1.0)
    ax.set_ylim(0.0, 1.01)
    ax.set_xlabel("recall (sensitivity)")
    ax.set_ylabel("precision (PPV)")
    ax.set_title(f"{title}\ndotted: prevalence (a random classifier's precision)")
    ax.legend(loc="lower left")
    return fig


def write_reliability_png(
    path: str | os.PathLike[str], *, labels: np.ndarray, probabilities: np.ndarray, dpi: int = DEFAULT_DPI
) -> Path:
    """:func:`reliability_figure` saved to ``path``."""
    return save_figure(reliability_figure(labels=labels, probabilities=probabilities), path, dpi=dpi)


def write_pr_png(
    path: str | os.PathLike[str], *, labels: np.ndarray, probabilities: np.ndarray, dpi: int = DEFAULT_DPI
) -> Path:
    """:func:`pr_figure` saved to ``path``."""
    return save_figure(pr_figure(labels=labels, probabilities=probabilities), path, dpi=dpi)
