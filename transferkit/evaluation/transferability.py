"""Measure where a dataset sits in the size x similarity matrix, from frozen backbone features.

Size is counted (images per class). Similarity is how well the *frozen* pretrained features
already separate the target classes:

* `knn_cv_accuracy`: cross-validated k-NN accuracy on L2-normalised features, normalised
  against chance as `(acc - 1/C) / (1 - 1/C)`, so 0 means "no better than guessing" and 1
  "perfect" whatever the number of classes C. This is the `similarity` used for placement.
* `logme_score`: LogME (You et al., ICML 2021), the log marginal evidence per sample of a
  Bayesian linear model on the features. Its absolute value depends on N, D and C, so it is
  reported next to the same score for a randomly initialised backbone on the same images
  (`logme_gain` = pretrained - random): a gain <= 0 means the pretrained features explain the
  labels no better than random ones, and the dataset is placed as "different" regardless.

Thresholds (defaults, overridable): `similarity_threshold=0.5` is the midpoint between chance
and perfect, i.e. the frozen features get at least half of the above-chance way on their own;
`size_threshold=500` images per class is where training backbone weights usually stops
overfitting faster than it helps (below it the small_* recipes train little of the backbone).
"""

from __future__ import annotations

import logging
import math
from dataclasses import asdict, dataclass, field

import numpy as np

from transferkit.tasks.finetune import choose_strategy

log = logging.getLogger(__name__)

QUADRANTS: tuple[str, ...] = ("small_similar", "small_different", "large_similar", "large_different")
SIZE_THRESHOLD: float = 500.0
SIMILARITY_THRESHOLD: float = 0.5


def _class_evidence(y: np.ndarray, u: np.ndarray, sigma: np.ndarray, n: int, d: int,
                    max_iter: int = 50, tol: float = 1e-3) -> float:
    """Maximum log evidence per sample of y ~ N(F w, 1/beta), w ~ N(0, 1/alpha), by fixed point.

    With F = U S V^T and sigma = S^2, everything is diagonal in the eigenbasis: x = U^T y.
    """
    x2 = (u.T @ y) ** 2
    outside = max(float(y @ y - x2.sum()), 0.0)  # part of y outside the span of F
    alpha, beta = 1.0, 1.0
    for _ in range(max_iter):
        t = alpha / beta
        gamma = float((sigma / (sigma + t)).sum())  # effective number of parameters
        m2 = float((sigma * x2 / (sigma + t) ** 2).sum())  # ||m||^2
        res2 = float((x2 * (t / (sigma + t)) ** 2).sum()) + outside  # ||F m - y||^2
        alpha, beta = gamma / (m2 + 1e-10), (n - gamma) / (res2 + 1e-10)
        if abs(alpha / beta - t) / t < tol:
            break
    # log|A| with A = alpha I + beta F^T F: D - k zero eigenvalues contribute log(alpha) each.
    log_det = float(np.log(alpha + beta * sigma).sum()) + (d - sigma.size) * math.log(alpha)
    evidence = (d / 2 * math.log(alpha) + n / 2 * math.log(beta) - 0.5 * log_det
                - beta / 2 * res2 - alpha / 2 * m2 - n / 2 * math.log(2 * math.pi))
    return evidence / n


def logme_score(features: np.ndarray, labels: np.ndarray) -> float:
    """LogME (You et al., ICML 2021): mean over classes of the per-sample max log evidence
    of a one-vs-rest Bayesian linear regression on `features` (N x D). Higher = more transferable."""
    f = np.asarray(features, dtype=np.float64)
    y = np.asarray(labels)
    if f.ndim != 2 or y.shape != (f.shape[0],):
        raise ValueError(f"features must be N x D and labels N; got {f.shape} and {y.shape}.")
    n, d = f.shape
    u, s, _ = np.linalg.svd(f, full_matrices=False)
    keep = s > s.max() * 1e-10 if s.size else s > 0
    u, sigma = u[:, keep], s[keep] ** 2
    classes = np.unique(y)
    return float(np.mean([_class_evidence((y == c).astype(np.float64), u, sigma, n, d) for c in classes]))


def _smallest_class(labels: np.ndarray) -> int:
    smallest = int(np.bincount(np.unique(labels, return_inverse=True)[1]).min())
    if smallest < 2:
        raise ValueError("Every class needs at least 2 images for a cross-validated score.")
    return smallest


def _folds(labels: np.ndarray, folds: int) -> int:
    return max(2, min(folds, _smallest_class(labels)))


def knn_cv_accuracy(features: np.ndarray, labels: np.ndarray, k: int = 5, folds: int = 5, seed: int = 0) -> float:
    """Stratified k-fold accuracy of a cosine k-NN classifier on frozen features."""
    from sklearn.model_selection import StratifiedKFold, cross_val_score
    from sklearn.neighbors import KNeighborsClassifier

    f = np.asarray(features, dtype=np.float64)
    f = f / np.maximum(np.linalg.norm(f, axis=1, keepdims=True), 1e-12)
    n_folds = _folds(labels, folds)
    # Never more neighbours than the smallest class keeps in a training fold.
    k = max(1, min(k, _smallest_class(labels) * (n_folds - 1) // n_folds))
    splitter = StratifiedKFold(n_splits=n_folds, shuffle=True, random_state=seed)
    scores = cross_val_score(KNeighborsClassifier(n_neighbors=k), f, labels, cv=splitter)
    return float(scores.mean())


def linear_probe_cv_accuracy(features: np.ndarray, labels: np.ndarray, folds: int = 5, seed: int = 0) -> float:
    """Stratified k-fold accuracy of a logistic-regression probe on standardised frozen features."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, cross_val_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    splitter = StratifiedKFold(n_splits=_folds(labels, folds), shuffle=True, random_state=seed)
    probe = make_pipeline(StandardScaler(), LogisticRegression(max_iter=500))
    return float(cross_val_score(probe, np.asarray(features, dtype=np.float64), labels, cv=splitter).mean())


def normalise_accuracy(accuracy: float, num_classes: int) -> float:
    """Chance-corrected accuracy `(acc - 1/C) / (1 - 1/C)`: 0 at chance, 1 when perfect."""
    chance = 1.0 / num_classes
    return (accuracy - chance) / (1.0 - chance)


@dataclass(frozen=True)
class Advice:
    """Where a dataset sits in the matrix, why, and which recipe to run."""

    quadrant: str
    recipe: str
    strategy: str
    num_images: int
    num_classes: int
    images_per_class: float
    similarity: float
    size_threshold: float
    similarity_threshold: float
    knn_accuracy: float | None = None
    linear_probe_accuracy: float | None = None
    logme: float | None = None
    logme_random: float | None = None
    logme_gain: float | None = None
    reasons: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)


def place_in_matrix(
    num_images: int,
    images_per_class: float,
    similarity: float,
    *,
    num_classes: int = 0,
    size_threshold: float = SIZE_THRESHOLD,
    similarity_threshold: float = SIMILARITY_THRESHOLD,
    knn_accuracy: float | None = None,
    linear_probe_accuracy: float | None = None,
    logme: float | None = None,
    logme_random: float | None = None,
) -> Advice:
    """Place a dataset: small if `images_per_class < size_threshold`, similar if the chance-normalised
    `similarity >= similarity_threshold` and the pretrained LogME beats the random-init one (when given)."""
    small = images_per_class < size_threshold
    gain = None if logme is None or logme_random is None else logme - logme_random
    similar = similarity >= similarity_threshold and (gain is None or gain > 0)
    quadrant = f"{'small' if small else 'large'}_{'similar' if similar else 'different'}"
    reasons = [
        f"{images_per_class:.0f} images per class {'<' if small else '>='} {size_threshold:g} -> {quadrant.split('_')[0]}",
        f"similarity {similarity:.2f} {'>=' if similarity >= similarity_threshold else '<'} {similarity_threshold:g}",
    ]
    if gain is not None:
        reasons.append(f"LogME gain over a random-init backbone {gain:+.3f} ({'>' if gain > 0 else '<='} 0)")
    return Advice(
        quadrant=quadrant, recipe=quadrant, strategy=choose_strategy(quadrant), num_images=int(num_images),
        num_classes=int(num_classes), images_per_class=float(images_per_class), similarity=float(similarity),
        size_threshold=float(size_threshold), similarity_threshold=float(similarity_threshold),
        knn_accuracy=knn_accuracy, linear_probe_accuracy=linear_probe_accuracy, logme=logme,
        logme_random=logme_random, logme_gain=gain, reasons=reasons,
    )


def measure(features: np.ndarray, labels: np.ndarray, random_features: np.ndarray | None = None,
            k: int = 5, folds: int = 5, seed: int = 0, class_counts: np.ndarray | None = None,
            probe: bool = True, random_labels: np.ndarray | None = None, **thresholds: float) -> Advice:
    """Score frozen features of the training images and place the dataset in the matrix.

    `class_counts` (images per class of the whole training split) sets the size when the
    features come from a subsample; by default the size is counted from `labels`. `probe=False`
    skips the linear probe (the race does not use it); `random_labels` are the labels of
    `random_features` when those come from a smaller subsample.
    """
    labels = np.asarray(labels)
    counts = np.bincount(np.unique(labels, return_inverse=True)[1]) if class_counts is None else class_counts
    knn = knn_cv_accuracy(features, labels, k=k, folds=folds, seed=seed)
    probe = linear_probe_cv_accuracy(features, labels, folds=folds, seed=seed) if probe else None
    logme = logme_score(features, labels)
    random_labels = labels if random_labels is None else np.asarray(random_labels)
    logme_random = None if random_features is None else logme_score(random_features, random_labels)
    similarity = normalise_accuracy(knn, len(counts))
    log.info("transferability: knn %.3f (normalised %.3f), probe %s, LogME %.3f", knn, similarity,
             "skipped" if probe is None else f"{probe:.3f}", logme)
    return place_in_matrix(
        int(np.sum(counts)), float(np.mean(counts)), similarity, num_classes=len(counts), knn_accuracy=knn,
        linear_probe_accuracy=probe, logme=logme, logme_random=logme_random, **thresholds,
    )
