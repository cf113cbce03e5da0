"""Which labels look wrong: confident learning on out-of-sample probabilities (our own code; cleanlab
is AGPL-3.0).

Per class j, the threshold t_j is the mean probability of j over the images labelled j. An image is
*flagged* when some class other than its label clears its threshold and is the likeliest of those
that do (an off-diagonal entry of the confident joint). Its score is 1 minus the normalised margin
(p[given] - max other p + 1) / 2, in [0, 1]: 1 = sure it is wrong. The ranking puts the flagged
images first, then the rest, each by score; outliers (far from every class, listed in outliers.csv)
come last, whatever their score: no class fits them, so their label is not what is wrong with them
and "suggested" means nothing for them.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

COLUMNS = ("path", "split", "given", "suggested", "score")


@dataclass(frozen=True)
class LabelRanking:
    order: np.ndarray      # image indices, most suspicious first
    score: np.ndarray      # N, 1 - normalised margin
    suggested: np.ndarray  # N, the likeliest class
    flagged: np.ndarray    # N bool, off the confident joint's diagonal
    thresholds: np.ndarray  # C per-class thresholds


def class_thresholds(probs: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """t_j: the mean probability of class j over the images labelled j (1 for a class with none)."""
    sums = np.zeros(probs.shape[1])
    np.add.at(sums, labels, probs[np.arange(len(labels)), labels])
    counts = np.bincount(labels, minlength=probs.shape[1])
    return np.where(counts > 0, sums / np.maximum(counts, 1), 1.0)


def confident_class(probs: np.ndarray, thresholds: np.ndarray) -> np.ndarray:
    """The likeliest class among those at or above their threshold, -1 where none is."""
    above = np.where(probs >= thresholds[None, :] - 1e-12, probs, -1.0)
    best = above.argmax(1)
    return np.where(above.max(1) >= 0, best, -1)


def margin_score(probs: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """1 - (p[given] - max other + 1) / 2: 0 for a sure label, 1 for a label sure to be wrong."""
    rows = np.arange(len(labels))
    given = probs[rows, labels]
    others = probs.copy()
    others[rows, labels] = -np.inf
    return 1 - (given - others.max(1) + 1) / 2


def rank_label_issues(probs: np.ndarray, labels: np.ndarray, outlier: np.ndarray | None = None) -> LabelRanking:
    """The full ranking: flagged images, then the other images, then the outliers; by score within each."""
    thresholds = class_thresholds(probs, labels)
    confident = confident_class(probs, thresholds)
    flagged = (confident >= 0) & (confident != labels)
    score = margin_score(probs, labels)
    outlier = np.zeros(len(labels), bool) if outlier is None else outlier
    group = np.where(outlier, 2, np.where(flagged, 0, 1))
    order = np.lexsort((-score, group))
    return LabelRanking(order, score, probs.argmax(1), flagged, thresholds)


def label_rows(names: list[str], splits: np.ndarray, labels: np.ndarray, class_names: list[str],
               ranking: LabelRanking) -> list[list]:
    return [[names[i], splits[i], class_names[labels[i]], class_names[ranking.suggested[i]],
             round(float(ranking.score[i]), 6)] for i in ranking.order]
