"""Transferability scores on synthetic features, and placement in the size x similarity matrix."""

from __future__ import annotations

import numpy as np
import pytest

from transferkit.evaluation.transferability import (
    QUADRANTS,
    knn_cv_accuracy,
    linear_probe_cv_accuracy,
    logme_score,
    measure,
    normalise_accuracy,
    place_in_matrix,
)


def clusters(n_per_class: int = 30, classes: int = 3, dim: int = 8, spread: float = 0.3, seed: int = 0):
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(classes, dim)) * 3
    labels = np.repeat(np.arange(classes), n_per_class)
    return centres[labels] + rng.normal(scale=spread, size=(labels.size, dim)), labels


def noise_like(features: np.ndarray, seed: int = 1) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=features.shape)


def gaussian_log_evidence(f: np.ndarray, y: np.ndarray, alpha: float, beta: float) -> float:
    """log N(y; 0, F F^T / alpha + I / beta) per sample: the evidence LogME maximises."""
    n = len(y)
    cov = f @ f.T / alpha + np.eye(n) / beta
    _, logdet = np.linalg.slogdet(cov)
    return float(-0.5 * (y @ np.linalg.solve(cov, y) + logdet + n * np.log(2 * np.pi)) / n)


def test_logme_equals_the_maximum_marginal_likelihood() -> None:
    f, labels = clusters(n_per_class=15, classes=2, dim=4, spread=1.0)
    y = (labels == 0).astype(float)
    grid = np.logspace(-3, 3, 121)
    best = max(gaussian_log_evidence(f, y, a, b) for a in grid for b in grid)
    # Two classes: one-vs-rest evidences of y and 1 - y; compute the class-0 one alone via one-class labels.
    score0 = logme_score(f, labels)
    per_class = [max(gaussian_log_evidence(f, (labels == c).astype(float), a, b) for a in grid for b in grid)
                 for c in (0, 1)]
    assert per_class[0] == pytest.approx(best)
    assert score0 == pytest.approx(np.mean(per_class), abs=2e-3)
    assert score0 >= np.mean(per_class) - 1e-6  # the fixed point is at least as good as the grid


def test_logme_separable_beats_noise_and_handles_rank_deficiency() -> None:
    f, labels = clusters()
    assert logme_score(f, labels) > logme_score(noise_like(f), labels) + 0.3
    wide = np.hstack([f, f[:, :4]])  # duplicated columns: rank < D
    assert np.isfinite(logme_score(wide, labels))
    few = noise_like(np.zeros((10, 64)))  # D > N
    assert np.isfinite(logme_score(few, np.arange(10) % 2))


def test_logme_rejects_mismatched_shapes() -> None:
    with pytest.raises(ValueError, match="N x D"):
        logme_score(np.zeros((5, 3)), np.zeros(4))


def test_knn_and_probe_accuracy_separate_clusters_from_noise() -> None:
    f, labels = clusters()
    assert knn_cv_accuracy(f, labels) == pytest.approx(1.0)
    assert linear_probe_cv_accuracy(f, labels) == pytest.approx(1.0)
    assert knn_cv_accuracy(noise_like(f), labels) < 0.6
    assert linear_probe_cv_accuracy(noise_like(f), labels) < 0.6


def test_knn_copes_with_tiny_classes() -> None:
    f, labels = clusters(n_per_class=2, classes=4)
    assert knn_cv_accuracy(f, labels, k=5, folds=5) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="at least 2"):
        knn_cv_accuracy(f[:7], labels[:7])


def test_normalise_accuracy_against_chance() -> None:
    assert normalise_accuracy(0.5, 2) == pytest.approx(0.0)
    assert normalise_accuracy(1.0, 10) == pytest.approx(1.0)
    assert normalise_accuracy(0.55, 10) == pytest.approx(0.5)


@pytest.mark.parametrize(
    ("per_class", "similarity", "quadrant", "strategy"),
    [(50, 0.9, "small_similar", "freeze"), (50, 0.2, "small_different", "partial"),
     (2000, 0.9, "large_similar", "full"), (2000, 0.2, "large_different", "full")],
)
def test_place_in_matrix(per_class: float, similarity: float, quadrant: str, strategy: str) -> None:
    advice = place_in_matrix(per_class * 10, per_class, similarity, num_classes=10)
    assert advice.quadrant == quadrant and advice.recipe == quadrant and advice.strategy == strategy
    assert quadrant in QUADRANTS
    assert advice.to_dict()["quadrant"] == quadrant and len(advice.reasons) == 2


def test_thresholds_are_boundaries_and_overridable() -> None:
    assert place_in_matrix(5000, 500, 0.5).quadrant == "large_similar"
    assert place_in_matrix(5000, 499, 0.49).quadrant == "small_different"
    assert place_in_matrix(5000, 499, 0.49, size_threshold=100, similarity_threshold=0.4).quadrant == "large_similar"


def test_negative_logme_gain_means_different() -> None:
    advice = place_in_matrix(100, 10, 0.9, logme=-1.2, logme_random=-1.0)
    assert advice.logme_gain == pytest.approx(-0.2) and advice.quadrant == "small_different"
    assert place_in_matrix(100, 10, 0.9, logme=-0.8, logme_random=-1.0).quadrant == "small_similar"


def test_measure_end_to_end() -> None:
    f, labels = clusters(n_per_class=20, classes=4)
    advice = measure(f, labels, random_features=noise_like(f))
    assert advice.quadrant == "small_similar"
    assert advice.num_images == 80 and advice.num_classes == 4 and advice.images_per_class == 20
    assert advice.knn_accuracy == pytest.approx(1.0) and advice.logme_gain > 0
    noisy = measure(noise_like(f), labels)
    assert noisy.quadrant == "small_different" and noisy.similarity < 0.3


def test_advise_command_writes_advice_and_plot(image_folder, fast) -> None:
    import json

    from transferkit.cli.app import run

    result = run(["advise", f"data.root={image_folder}", *fast])
    saved = json.loads(open(result["advice_json"]).read())
    assert saved["quadrant"] == result["quadrant"] and saved["quadrant"].startswith("small_")
    assert saved["recipe"] == saved["quadrant"] and saved["num_classes"] == 2
    assert saved["num_images"] == sum(1 for _ in (image_folder).rglob("*.png")) - 4  # 2 val + 2 test held out
    assert 0 <= saved["knn_accuracy"] <= 1 and saved["logme"] is not None
    assert saved["race"]["candidates"][:2] == ["freeze", "full-llrd"] and saved["race"]["left_out"]
    from PIL import Image

    assert Image.open(result["advice_png"]).size[0] > 100
