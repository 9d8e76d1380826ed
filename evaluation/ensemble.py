"""Ensembles of several models' probabilities (the seed study).

- :func:`mean_ensemble`: the plain mean of the models' probabilities.
- :func:`weighted_ensemble`: a weighted mean; the weights come from
  :func:`fit_ensemble_weights`, which only ever sees **validation**
  predictions, so the test numbers reported for the weighted ensemble are not
  tuned on the test set.

Weight search: every point of the simplex grid with spacing ``step`` (weights
``>= 0`` that are multiples of ``step`` and sum to 1; ``step`` must divide 1) is
scored by the macro F1 of the argmax of the weighted mean on the validation
images. Ties (equal macro F1) are broken deterministically: first the weights
closest to equal weights (smallest sum of squares, i.e. the least committed
choice), then the earliest in descending lexicographic order, which favours the
model given first.
"""
from __future__ import annotations

import itertools
import math
from collections.abc import Sequence

import numpy as np

from data.labels import NUM_CLASSES
from evaluation.metrics import metrics_from_confusion

DEFAULT_WEIGHT_STEP = 0.05
MAX_GRID_POINTS = 200_000
# Grid points scored per block: (points x images x classes) floats stay small.
_BLOCK = 512


def _stack(probabilities: Sequence[np.ndarray]) -> np.ndarray:
    if len(probabilities) == 0:
        raise ValueError("an ensemble needs at least one model's probabilities, received none")
    stacked = np.stack([np.asarray(p, dtype=np.float64) for p in probabilities])
    if stacked.ndim != 3 or stacked.shape[2] != NUM_CLASSES:
        raise ValueError(f"probabilities must be (n, {NUM_CLASSES}) per model, received {stacked.shape[1:]}")
    return stacked


def mean_ensemble(probabilities: Sequence[np.ndarray]) -> np.ndarray:
    """Mean of the models' ``(n, 3)`` probabilities (rows still sum to 1)."""
    return _stack(probabilities).mean(axis=0)


def weighted_ensemble(
    probabilities: Sequence[np.ndarray], weights: Sequence[float] | np.ndarray
) -> np.ndarray:
    """Weighted mean of the models' probabilities; ``weights`` are >= 0 and sum to 1."""
    stacked = _stack(probabilities)
    w = np.asarray(weights, dtype=np.float64)
    if w.shape != (len(stacked),) or np.any(w < 0) or not math.isclose(w.sum(), 1.0, abs_tol=1e-9):
        raise ValueError(
            f"weights must be {len(stacked)} non-negative numbers summing to 1, received {w.tolist()}"
        )
    return np.tensordot(w, stacked, axes=1)


def simplex_grid(n_models: int, *, step: float = DEFAULT_WEIGHT_STEP) -> np.ndarray:
    """All weight vectors on the simplex with spacing ``step``, descending lexicographic order.

    Returns ``(G, n_models)`` floats; ``G = C(1/step + n_models - 1, n_models - 1)``.
    """
    if n_models < 1:
        raise ValueError(f"n_models must be >= 1, received {n_models}")
    if not 0.0 < step <= 1.0:
        raise ValueError(f"weight step must be in (0, 1], received {step}")
    parts = round(1.0 / step)
    if not math.isclose(parts * step, 1.0, abs_tol=1e-9):
        raise ValueError(f"weight step must divide 1 (e.g. 0.05, 0.1, 0.25), received {step}")
    size = math.comb(parts + n_models - 1, n_models - 1)
    if size > MAX_GRID_POINTS:
        raise ValueError(
            f"weight grid for {n_models} models with step {step} has {size} points "
            f"(limit {MAX_GRID_POINTS}); use a larger step"
        )
    # Stars and bars: n_models - 1 bar positions among parts + n_models - 1 slots.
    rows = []
    for bars in itertools.combinations(range(parts + n_models - 1), n_models - 1):
        edges = (-1, *bars, parts + n_models - 1)
        rows.append([edges[i + 1] - edges[i] - 1 for i in range(n_models)])
    units = np.array(rows, dtype=np.int64).reshape(-1, n_models)
    units = units[np.lexsort(-units.T[::-1])]
    return units / parts


def macro_f1_of(labels: np.ndarray, probabilities: np.ndarray) -> np.ndarray:
    """Macro F1 of argmax predictions for each of ``(..., n, 3)`` probability sets, shape ``(...)``."""
    labels = np.asarray(labels)
    predicted = np.argmax(probabilities, axis=-1)
    lead = predicted.shape[:-1]
    flat = predicted.reshape(-1, predicted.shape[-1])
    cell = labels[None, :] * NUM_CLASSES + flat
    offsets = np.arange(len(flat))[:, None] * NUM_CLASSES * NUM_CLASSES
    counts = np.bincount((cell + offsets).ravel(), minlength=len(flat) * NUM_CLASSES * NUM_CLASSES)
    cms = counts.reshape(len(flat), NUM_CLASSES, NUM_CLASSES)
    return metrics_from_confusion(cms)["macro_f1"].reshape(lead)


def fit_ensemble_weights(
    *, labels: np.ndarray, probabilities: Sequence[np.ndarray], step: float = DEFAULT_WEIGHT_STEP
) -> np.ndarray:
    """Weights maximising validation macro F1 over the simplex grid (ties: module docstring).

    Only validation data belongs here: the caller evaluates the returned weights
    on test predictions it never passes to this function.

    Args:
        labels: ``(n,)`` true class indices of the validation images.
        probabilities: per model, ``(n, 3)`` validation probabilities, same image order.
        step: grid spacing; must divide 1.

    Returns:
        ``(n_models,)`` weights, multiples of ``step``, summing to 1.
    """
    stacked = _stack(probabilities)
    labels = np.asarray(labels)
    if len(labels) != stacked.shape[1]:
        raise ValueError(
            f"labels must be one per validation image ({stacked.shape[1]} per model), received {len(labels)}"
        )
    grid = simplex_grid(len(stacked), step=step)
    scores = np.empty(len(grid))
    for start in range(0, len(grid), _BLOCK):
        block = grid[start : start + _BLOCK]
        scores[start : start + len(block)] = macro_f1_of(labels, np.tensordot(block, stacked, axes=1))
    # Scores are ratios of small integers computed identically, but allow for float noise.
    best = np.flatnonzero(scores >= scores.max() - 1e-12)
    spread = np.round((grid[best] * round(1.0 / step)) ** 2).sum(axis=1)  # integer sums of squares
    return grid[best[np.argmin(spread)]]  # argmin keeps the first (grid order) among equals
