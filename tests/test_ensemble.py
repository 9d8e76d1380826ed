"""Ensembles: the simplex grid, mean/weighted means, and weights fitted on validation data only."""
from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import f1_score

from evaluation.ensemble import (
    fit_ensemble_weights,
    macro_f1_of,
    mean_ensemble,
    simplex_grid,
    weighted_ensemble,
)


def confident(classes: np.ndarray) -> np.ndarray:
    """0.8 on the given class, 0.1 on the two others."""
    probs = np.full((len(classes), 3), 0.1)
    probs[np.arange(len(classes)), classes] = 0.8
    return probs


def split_data(n: int = 60) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Labels, a model that is always right, and one that is wrong on every other image."""
    labels = np.arange(n) % 3
    right = confident(labels)
    half_wrong = confident(np.where(np.arange(n) % 2 == 0, (labels + 1) % 3, labels))
    return labels, right, half_wrong


def test_simplex_grid() -> None:
    np.testing.assert_allclose(simplex_grid(2, step=0.5), [[1.0, 0.0], [0.5, 0.5], [0.0, 1.0]])
    grid = simplex_grid(3, step=0.05)
    assert grid.shape == (231, 3)  # C(22, 2)
    np.testing.assert_allclose(grid.sum(axis=1), 1.0)
    np.testing.assert_allclose(grid[0], [1, 0, 0])
    np.testing.assert_allclose(grid[-1], [0, 0, 1])
    assert len({tuple(np.round(r, 6)) for r in grid}) == 231
    with pytest.raises(ValueError, match="must divide 1"):
        simplex_grid(2, step=0.03)
    with pytest.raises(ValueError, match="use a larger step"):
        simplex_grid(12, step=0.05)


def test_mean_and_weighted_ensembles() -> None:
    a = np.array([[0.6, 0.3, 0.1]])
    b = np.array([[0.2, 0.2, 0.6]])
    np.testing.assert_allclose(mean_ensemble([a, b]), [[0.4, 0.25, 0.35]])
    np.testing.assert_allclose(weighted_ensemble([a, b], [0.75, 0.25]), [[0.5, 0.275, 0.225]])
    with pytest.raises(ValueError, match="summing to 1"):
        weighted_ensemble([a, b], [0.5, 0.6])


def test_macro_f1_of_matches_sklearn() -> None:
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 3, 80)
    probs = rng.dirichlet([1, 1, 1], (4, 80))
    expected = [
        f1_score(labels, p.argmax(axis=1), average="macro", labels=[0, 1, 2], zero_division=0) for p in probs
    ]
    np.testing.assert_allclose(macro_f1_of(labels, probs), expected)


def test_weights_follow_the_validation_data() -> None:
    # Validation: A always right, B wrong on half -> weights favour A.
    val_labels, val_a, val_b = split_data()
    weights = fit_ensemble_weights(labels=val_labels, probabilities=[val_a, val_b], step=0.05)
    # Ensemble is right everywhere iff w_A > w_B; of those perfect weights the
    # tie-break takes the one closest to equal weights.
    np.testing.assert_allclose(weights, [0.55, 0.45])
    # On data where B is the better model the search would favour B: the
    # weights really come from the data they are given.
    test_labels, test_b, test_a = split_data(90)
    np.testing.assert_allclose(
        fit_ensemble_weights(labels=test_labels, probabilities=[test_a, test_b], step=0.05), [0.45, 0.55]
    )


def test_ties_broken_deterministically() -> None:
    labels, right, _ = split_data()
    # Identical models: every weight ties; the closest to (1/3, 1/3, 1/3) on the
    # 0.05 grid are the permutations of (7, 7, 6)/20, and the earliest in
    # descending lexicographic order favours the first models.
    w = fit_ensemble_weights(labels=labels, probabilities=[right, right, right], step=0.05)
    np.testing.assert_allclose(w, [0.35, 0.35, 0.30])
    np.testing.assert_allclose(fit_ensemble_weights(labels=labels, probabilities=[right, right]), [0.5, 0.5])
