"""The multi-label part of the run report: per-class average precision, precision-recall curves and the
test predictions, drawn from `report/test_outputs.npz` (logits and label-set bitmasks) and the thresholds
results.json records (absent: 0.5)."""

from __future__ import annotations

import csv
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure
from sklearn.metrics import average_precision_score, precision_recall_curve

from transferkit.data.multilabel import LABEL_SEPARATOR, multi_hot
from transferkit.evaluation.reports.figures import save

CURVES_UP_TO = 20  # classes drawn in pr_curves.png (the table lists them all)


def sigmoid(logits: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-np.asarray(logits, dtype=np.float64)))


def class_rows(probs: np.ndarray, hot: np.ndarray, names: Sequence[str], thresholds: Sequence[float]) -> list[dict]:
    """Per class: AP, support, its threshold and precision / recall / F1 there; sorted by AP, lowest first."""
    rows = []
    for c, name in enumerate(names):
        truth, chosen = hot[:, c].astype(bool), probs[:, c] >= thresholds[c]
        tp, fp, fn = int((truth & chosen).sum()), int((~truth & chosen).sum()), int((truth & ~chosen).sum())
        ap = float(average_precision_score(truth, probs[:, c])) if truth.any() else None
        rows.append({"class": name, "ap": ap, "support": int(truth.sum()), "threshold": float(thresholds[c]),
                     "precision": tp / (tp + fp) if tp + fp else 0.0, "recall": tp / (tp + fn) if tp + fn else 0.0,
                     "f1": 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else 1.0})
    return sorted(rows, key=lambda r: (r["ap"] is not None, r["ap"] or 0.0))


def pr_figure(probs: np.ndarray, hot: np.ndarray, names: Sequence[str], path: Path) -> Path:
    """Precision-recall curves of the classes (the `CURVES_UP_TO` most frequent), AP in the legend."""
    figure = Figure(figsize=(6.0, 4.5))
    axes = figure.add_axes((0.1, 0.12, 0.55, 0.8))
    shown = np.argsort(-hot.sum(0), kind="stable")[:CURVES_UP_TO]
    for c in sorted(shown):
        if not hot[:, c].any():
            continue
        precision, recall, _ = precision_recall_curve(hot[:, c], probs[:, c])
        ap = average_precision_score(hot[:, c], probs[:, c])
        axes.step(recall, precision, where="post", label=f"{names[c]} (AP {ap:.3f})")
    axes.set(xlabel="recall", ylabel="precision", xlim=(0, 1.02), ylim=(0, 1.02), title="Precision-recall (test)")
    axes.legend(loc="upper left", bbox_to_anchor=(1.02, 1.0), fontsize=7, frameon=False)
    return save(figure, path)


def write_multilabel(folder: Path, saved: dict, names: list[str], results: dict) -> tuple[dict, dict]:
    """report/per_class_ap.csv, pr_curves.png and predictions.csv; the per-class table for the page."""
    # the test outputs are the run's model's (a finetune=auto ensemble's too), and so are results' thresholds
    own = results.get("thresholds") or {}
    tuned = own.get("thresholds") or {}
    thresholds = [float(tuned.get(name, 0.5)) for name in names]
    probs, hot = sigmoid(saved["logits"]), multi_hot(saved["targets"], len(names))
    rows = class_rows(probs, hot, names, thresholds)
    files = {"ap_csv": folder / "per_class_ap.csv", "pr_png": pr_figure(probs, hot, names, folder / "pr_curves.png"),
             "predictions_csv": folder / "predictions.csv"}
    with files["ap_csv"].open("w", newline="") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(["class", "ap", "support", "threshold", "precision", "recall", "f1"])
        writer.writerows([[r["class"], "" if r["ap"] is None else r["ap"], r["support"], r["threshold"],
                           r["precision"], r["recall"], r["f1"]] for r in rows])
    paths = [str(p) for p in saved["paths"]] if len(saved["paths"]) else [""] * len(probs)
    with files["predictions_csv"].open("w", newline="") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(["index", "path", "true", "predicted", *(f"p_{n}" for n in names)])
        for k in range(len(probs)):
            true = LABEL_SEPARATOR.join(n for n, h in zip(names, hot[k]) if h)
            predicted = LABEL_SEPARATOR.join(n for n, p, t in zip(names, probs[k], thresholds) if p >= t)
            writer.writerow([int(saved["indices"][k]), paths[k], true, predicted, *map(repr, probs[k].tolist())])
    return files, {"per_class_ap": rows}
