"""Images far from every class in feature space: wrong domain, blank, corrupted-looking.

For each class, an image's distance to it is the mean cosine distance to its `k` nearest images of
that class (itself left out); its outlier score is the distance to the nearest class. A mislabelled
image is near some class (its true one) and scores low here; an image of no class scores high.
"""

from __future__ import annotations

import numpy as np

from transferkit.evaluation.audit.neighbours import nearest

COLUMNS = ("path", "split", "score")


def outlier_scores(features: np.ndarray, labels: np.ndarray, num_classes: int, k: int) -> np.ndarray:
    """N scores in [0, 2]: the mean cosine distance to the k nearest images of the nearest class."""
    best = np.full(len(features), np.inf, dtype=np.float64)
    positions = np.arange(len(features))
    for c in range(num_classes):
        members = np.flatnonzero(labels == c)
        if len(members) < 2:
            continue
        _, sims = nearest(features, features[members], k + 1)
        own = np.isin(positions, members)
        # an image of class c finds itself first: drop that column for it, the last for the others
        kept = np.where(own[:, None], sims[:, 1:], sims[:, :-1])
        best = np.minimum(best, 1 - kept.mean(1))
    return np.where(np.isfinite(best), best, 0.0)


def flag_outliers(scores: np.ndarray) -> np.ndarray:
    """Scores far above the bulk: beyond the median + 5 x the median absolute deviation."""
    median = np.median(scores)
    spread = np.median(np.abs(scores - median)) or 1e-6
    return scores > median + 5 * spread


def outlier_rows(names: list[str], splits: np.ndarray, scores: np.ndarray) -> list[list]:
    order = np.argsort(-scores, kind="stable")
    return [[names[i], splits[i], round(float(scores[i]), 6)] for i in order]
