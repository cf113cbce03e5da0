"""Scores from test outputs: the confusion matrix, per-class precision/recall/F1, per-class IoU and
the ranking of the worst predictions. Pure numpy; the report writes these as CSV and PNG."""

from __future__ import annotations

from collections.abc import Sequence
from fractions import Fraction

import numpy as np


def confusion_matrix(targets: np.ndarray, preds: np.ndarray, num_classes: int) -> np.ndarray:
    """``C x C`` counts, rows the true class, columns the predicted one."""
    targets, preds = np.asarray(targets, dtype=np.int64), np.asarray(preds, dtype=np.int64)
    flat = np.bincount(targets * num_classes + preds, minlength=num_classes * num_classes)
    return flat.reshape(num_classes, num_classes)


def ratio(numerator, denominator) -> Fraction:
    """numerator / denominator, exactly; 0 where the denominator is 0 (scikit-learn's zero_division=0)."""
    return Fraction(numerator) / Fraction(denominator) if denominator else Fraction(0)


def per_class_rows(confmat: np.ndarray, class_names: Sequence[str]) -> list[dict]:
    """One row per class (precision, recall, F1, support), then `macro avg` and `weighted avg` rows
    as scikit-learn's classification_report defines them. Computed in exact fractions, so each value
    is the correctly rounded float of its true value."""
    confmat = np.asarray(confmat, dtype=np.int64)
    hits, support, predicted = (np.diag(confmat).tolist(), confmat.sum(axis=1).tolist(),
                                confmat.sum(axis=0).tolist())
    exact = [{"precision": ratio(hits[k], predicted[k]), "recall": ratio(hits[k], support[k]),
              "f1": ratio(2 * hits[k], predicted[k] + support[k])}  # = 2PR / (P + R)
             for k in range(len(class_names))]
    total = sum(support)
    macro = {key: ratio(sum(row[key] for row in exact), len(exact)) for key in ("precision", "recall", "f1")}
    weighted = {key: ratio(sum(row[key] * n for row, n in zip(exact, support)), total)
                for key in ("precision", "recall", "f1")}
    rows = [{"class": str(name), **exact[k], "support": int(support[k])} for k, name in enumerate(class_names)]
    rows += [{"class": "macro avg", **macro, "support": total}, {"class": "weighted avg", **weighted, "support": total}]
    return [{key: float(value) if isinstance(value, Fraction) else value for key, value in row.items()}
            for row in rows]


def recall_rows(confmat: np.ndarray, class_names: Sequence[str]) -> list[dict]:
    """Per class: recall, support and how often it was predicted, lowest recall first (ties by name);
    `never_predicted` flags a class with test images that the model never predicts."""
    confmat = np.asarray(confmat, dtype=np.int64)
    hits, support, predicted = np.diag(confmat), confmat.sum(axis=1), confmat.sum(axis=0)
    rows = [{"class": str(name), "recall": float(ratio(int(hits[k]), int(support[k]))), "support": int(support[k]),
             "predicted": int(predicted[k]), "never_predicted": bool(support[k] > 0 and predicted[k] == 0)}
            for k, name in enumerate(class_names)]
    return sorted(rows, key=lambda r: (r["recall"], r["class"]))


def iou_rows(confmat: np.ndarray, class_names: Sequence[str]) -> list[dict]:
    """Per class: IoU (empty where the class is in neither truth nor prediction), true and
    predicted pixel counts. Same IoU as `tasks.segmentation.scores_from_confusion`."""
    confmat = np.asarray(confmat, dtype=np.int64)
    hits, truth, predicted = np.diag(confmat), confmat.sum(axis=1), confmat.sum(axis=0)
    union = truth + predicted - hits
    return [{"class": str(name), "iou": float(hits[k]) / float(union[k]) if union[k] else None,
             "true_pixels": int(truth[k]), "predicted_pixels": int(predicted[k])}
            for k, name in enumerate(class_names)]


def softmax(logits: np.ndarray) -> np.ndarray:
    shifted = np.asarray(logits, dtype=np.float64) - np.max(logits, axis=1, keepdims=True)
    exp = np.exp(shifted)
    return exp / exp.sum(axis=1, keepdims=True)


def rank_top_losses(probs: np.ndarray, targets: np.ndarray, count: int) -> np.ndarray:
    """Positions of the `count` worst predictions: the wrong ones, most confident first; if fewer
    are wrong, then the correct ones with the lowest probability for their true class."""
    preds = probs.argmax(axis=1)
    rows = np.arange(len(targets))
    wrong = np.flatnonzero(preds != targets)
    right = np.flatnonzero(preds == targets)
    wrong = wrong[np.argsort(-probs[wrong, preds[wrong]], kind="stable")]
    right = right[np.argsort(probs[rows[right], targets[right]], kind="stable")]
    return np.concatenate([wrong, right])[:count].astype(np.int64)
