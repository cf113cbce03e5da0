"""The linear head solver: L-BFGS logistic regression with a cross-validated C (transferkit.tasks.head_solver)."""

from __future__ import annotations

import numpy as np
import pytest

from transferkit.tasks.head_solver import C_GRID, DEFAULT_C, choose_c, choose_folds, solve_linear_head


def blobs(n_per_class: int, centres: np.ndarray, spread: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(len(centres)), n_per_class)
    return (centres[labels] + spread * rng.standard_normal((len(labels), centres.shape[1]))).astype(np.float32), labels


def predict(solution, features: np.ndarray) -> np.ndarray:
    return (features @ solution.weight.T + solution.bias).argmax(1)


def test_separable_classes_are_solved_on_raw_features():
    centres = np.array([[0, 0, 0, 0], [8, 0, 0, 0], [0, 8, 0, 0]], dtype=np.float32)
    features, labels = blobs(12, centres, 1.0, seed=0)
    held_features, held_labels = blobs(20, centres, 1.0, seed=1)
    solution = solve_linear_head(features, labels, num_classes=3, seed=0)
    assert solution.weight.shape == (3, 4) and solution.bias.shape == (3,)
    assert solution.weight.dtype == np.float32
    assert (predict(solution, features) == labels).all()
    assert (predict(solution, held_features) == held_labels).all()
    assert solution.folds == 5 and set(solution.cv_acc) == set(C_GRID)
    assert solution.cv_acc[solution.c] == 1.0


def test_standardisation_is_folded_back_into_weight_and_bias():
    centres = np.array([[0, 0, 0], [3, 3, 0]], dtype=np.float32)
    features, labels = blobs(15, centres, 1.0, seed=2)
    scale, shift = np.array([100.0, 0.01, 5.0], np.float32), np.array([1000.0, -3.0, 7.0], np.float32)
    plain = solve_linear_head(features, labels, 2, seed=0)
    moved = solve_linear_head(features * scale + shift, labels, 2, seed=0)
    assert moved.c == plain.c
    np.testing.assert_allclose(features @ plain.weight.T + plain.bias,
                               (features * scale + shift) @ moved.weight.T + moved.bias, atol=2e-3)


def test_c_is_the_best_cross_validated_one_and_ties_go_to_the_lower_loss():
    assert choose_c({0.1: 0.8, 1.0: 0.9, 10.0: 0.85}, {0.1: 0.5, 1.0: 0.6, 10.0: 0.4}) == 1.0
    assert choose_c({0.1: 0.9, 1.0: 0.9}, {0.1: 0.3, 1.0: 0.2}) == 1.0
    rng = np.random.default_rng(0)
    features = rng.standard_normal((60, 30)).astype(np.float32)  # few images, many noise features
    labels = (features[:, 0] + 0.8 * rng.standard_normal(60) > 0).astype(np.int64)
    solution = solve_linear_head(features, labels, 2, seed=3)
    best = max(solution.cv_acc.values())
    tied = [c for c, acc in solution.cv_acc.items() if acc >= best - 1e-9]
    assert solution.c == min(tied, key=solution.cv_loss.get)
    again = solve_linear_head(features, labels, 2, seed=3)
    assert again.cv_acc == solution.cv_acc and np.array_equal(again.weight, solution.weight)


def test_folds_shrink_with_the_smallest_class_and_stop_below_two_images():
    assert choose_folds(np.array([0] * 10 + [1] * 10)) == 5
    assert choose_folds(np.array([0] * 10 + [1] * 3)) == 3
    assert choose_folds(np.array([0] * 10 + [1])) == 0
    features, labels = blobs(3, np.array([[0, 0], [5, 5]], np.float32), 0.5, seed=0)
    assert solve_linear_head(features, labels, 2).folds == 3
    lone = solve_linear_head(features[:4], labels[:4], 2)  # one image of class 1
    assert lone.folds == 0 and lone.c == DEFAULT_C and lone.cv_acc == {}


def test_a_class_missing_from_training_gets_a_row_and_is_never_predicted():
    features, labels = blobs(10, np.array([[0, 0], [6, 0]], np.float32), 1.0, seed=0)
    solution = solve_linear_head(features, labels, num_classes=3, seed=0)
    assert solution.weight.shape == (3, 2)
    assert set(predict(solution, features)) <= {0, 1}


def test_bad_input_is_rejected():
    with pytest.raises(ValueError, match="labels must lie in"):
        solve_linear_head(np.zeros((4, 2), np.float32), np.array([0, 1, 2, 1]), num_classes=2)
    with pytest.raises(ValueError, match="N x D features"):
        solve_linear_head(np.zeros((4, 2), np.float32), np.array([0, 1]), num_classes=2)
