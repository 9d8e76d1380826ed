"""Calibration and threshold-free metrics against hand-computed values and scikit-learn."""
from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import average_precision_score

from evaluation.calibration import (
    ECE_BINS,
    average_precision_ovr,
    brier_score,
    confidence_bins,
    expected_calibration_error,
    reliability,
    weighted_average_precision,
)

ONE = np.ones((1, 4))


def test_brier_score_by_hand() -> None:
    labels = np.array([0, 2])
    probabilities = np.array([[0.7, 0.2, 0.1], [0.2, 0.3, 0.5]])
    # (0.3^2 + 0.2^2 + 0.1^2) = 0.14 and (0.2^2 + 0.3^2 + 0.5^2) = 0.38
    assert brier_score(labels, probabilities, np.ones((1, 2)))[0] == pytest.approx(0.26)
    assert brier_score([1], [[0.0, 1.0, 0.0]], np.ones((1, 1)))[0] == 0.0
    assert brier_score([1], [[1.0, 0.0, 0.0]], np.ones((1, 1)))[0] == 2.0  # the worst possible


def test_ece_by_hand() -> None:
    labels = np.array([0, 1, 2, 1])
    probabilities = np.array([
        [0.90, 0.05, 0.05],  # 14th of the 15 bins, right
        [0.90, 0.05, 0.05],  # same bin, wrong: accuracy 0.5 at confidence 0.9
        [0.20, 0.18, 0.62],  # 10th bin, right: gap 0.38
        [0.29, 0.42, 0.29],  # 7th bin, right: gap 0.58
    ])
    # 2/4 * |0.5 - 0.9| + 1/4 * 0.38 + 1/4 * 0.58
    assert expected_calibration_error(labels, probabilities, ONE)[0] == pytest.approx(0.44)
    diagram = reliability(labels, probabilities, ONE)
    assert diagram.count[0].tolist() == [0] * 6 + [1, 0, 0, 1, 0, 0, 0, 2, 0]
    assert diagram.accuracy[0, 13] == 0.5 and diagram.confidence[0, 13] == pytest.approx(0.9)
    assert np.isnan(diagram.accuracy[0, 0]) and len(diagram.edges) == ECE_BINS + 1


def test_ece_bins_are_closed_on_the_right() -> None:
    assert confidence_bins(np.array([0.0, 1 / 3, 0.5, 0.51, 1.0]), 2).tolist() == [0, 0, 0, 1, 1]
    assert confidence_bins(np.array([0.0, 0.25, 0.2501, 1.0]), 4).tolist() == [0, 0, 1, 3]


def test_perfectly_calibrated_predictions_have_zero_ece() -> None:
    # Confidence 0.75, three of four right; confidence 1.0 and right.
    labels = np.array([0, 0, 0, 1, 2])
    probabilities = np.array([[0.75, 0.25, 0.0]] * 4 + [[0.0, 0.0, 1.0]])
    assert expected_calibration_error(labels, probabilities, np.ones((1, 5)))[0] == pytest.approx(0.0)


def test_average_precision_by_hand_and_with_ties() -> None:
    positive = np.array([1, 0, 1, 0, 1], bool)
    scores = np.array([0.9, 0.8, 0.7, 0.6, 0.2])
    # 1/3 * 1 + 1/3 * 2/3 + 1/3 * 3/5
    assert weighted_average_precision(positive, scores, np.ones((1, 5)))[0] == pytest.approx(0.755555555)
    tied = weighted_average_precision(np.array([1, 0, 1], bool), np.array([0.9, 0.9, 0.5]), np.ones((1, 3)))
    assert tied[0] == pytest.approx(0.5 * 0.5 + 0.5 * 2 / 3)
    assert np.isnan(
        weighted_average_precision(np.zeros(3, bool), np.array([0.1, 0.2, 0.3]), np.ones((1, 3)))[0]
    )


def test_weights_equal_repeating_the_images_and_match_sklearn() -> None:
    rng = np.random.default_rng(0)
    n = 60
    labels = rng.integers(0, 3, n)
    probabilities = rng.dirichlet([1, 1, 1], n)
    probabilities[::7, 1] = probabilities[::7, 0]  # some ties
    counts = rng.integers(0, 3, (5, n))
    ap = average_precision_ovr(labels, probabilities, counts)
    ece = expected_calibration_error(labels, probabilities, counts)
    brier = brier_score(labels, probabilities, counts)
    for b in range(5):
        idx = np.repeat(np.arange(n), counts[b])
        expected_ap = [average_precision_score(labels[idx] == k, probabilities[idx, k]) for k in range(3)]
        np.testing.assert_allclose(ap[b], expected_ap, rtol=1e-12)
        ones = np.ones((1, len(idx)))
        assert ece[b] == pytest.approx(expected_calibration_error(labels[idx], probabilities[idx], ones)[0])
        assert brier[b] == pytest.approx(brier_score(labels[idx], probabilities[idx], ones)[0])


def test_bad_weights_are_refused() -> None:
    with pytest.raises(ValueError, match=r"received \(2,\)"):
        brier_score([0, 1], [[1, 0, 0], [0, 1, 0]], np.ones(2))
    with pytest.raises(ValueError, match=">= 0"):
        brier_score([0, 1], [[1, 0, 0], [0, 1, 0]], -np.ones((1, 2)))
