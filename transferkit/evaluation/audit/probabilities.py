"""Out-of-sample class probabilities for every labelled image: a k-fold solved head on frozen features.

One stratified k-fold over all labelled images (train, val and test): each image is scored by the
head of the fold it was held out of, so no image is scored by a head that saw its label. Each fold
walks the regularisation grid of the solved head (`tasks.head_solver`, warm starts); the C with the
best held-out accuracy gives the probabilities. That is the cost of one `fit`'s C search.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import numpy as np
import torch
from sklearn.model_selection import StratifiedKFold

from transferkit.errors import ConfigError
from transferkit.tasks.head_solver import C_GRID, choose_c, choose_folds, fit_logistic, threads_for

log = logging.getLogger("transferkit")


@dataclass(frozen=True)
class OutOfSample:
    """N x C probabilities, each from a model that never saw that image's label, and how they were made."""

    probs: np.ndarray
    source: str            # "k-fold solved head" or "cv run <dir>"
    record: dict

    @property
    def accuracy(self) -> float | None:
        return self.record.get("accuracy")


def check_folds(labels: np.ndarray, class_names: list[str], folds: int) -> int:
    k = choose_folds(labels, folds)
    if k < 2:
        counts = np.bincount(labels, minlength=len(class_names))
        small = [class_names[c] for c in np.flatnonzero((counts > 0) & (counts < 2))]
        raise ConfigError(f"class {small[0]!r} has 1 labelled image: out-of-sample label scores need 2 or more "
                          f"per class (audit.folds={folds}); add images to it or leave it out with data.exclude.")
    return k


def fold_probabilities(scaled: torch.Tensor, labels: np.ndarray, num_classes: int, folds: int,
                       seed: int) -> dict[float, np.ndarray]:
    """Held-out probabilities for every C of the grid (each fold warm-starts along the grid)."""
    target = torch.from_numpy(labels)
    out = {c: np.zeros((len(labels), num_classes), dtype=np.float32) for c in C_GRID}
    splitter = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
    for train, held in splitter.split(np.zeros(len(labels)), labels):
        params = None
        for c in C_GRID:
            params = fit_logistic(scaled[train], target[train], num_classes, c, params)
            logits = scaled[held] @ params[:-1] + params[-1]
            out[c][held] = torch.softmax(logits, dim=1).numpy()
    return out


def solved_head_probabilities(features: np.ndarray, labels: np.ndarray, class_names: list[str], folds: int,
                              seed: int) -> OutOfSample:
    """k-fold out-of-sample probabilities of the solved head, C chosen by held-out accuracy."""
    start = time.perf_counter()
    k = check_folds(labels, class_names, folds)
    x = np.asarray(features, dtype=np.float32)
    std = x.std(0)
    scaled = torch.from_numpy((x - x.mean(0)) / np.where(std > 1e-6, std, 1.0).astype(np.float32))
    with threads_for(x.size):
        probs = fold_probabilities(scaled, labels, len(class_names), k, seed)
    acc = {c: float((p.argmax(1) == labels).mean()) for c, p in probs.items()}
    loss = {c: float(-np.log(p[np.arange(len(labels)), labels].clip(min=1e-12)).mean()) for c, p in probs.items()}
    c = choose_c(acc, loss)
    record = {"source": "k-fold solved head", "folds": k, "c": c, "accuracy": round(acc[c], 4),
              "seconds": round(time.perf_counter() - start, 2)}
    log.info("audit: %d-fold solved head, C=%g, out-of-sample accuracy %.4f", k, c, acc[c])
    return OutOfSample(probs[c], "k-fold solved head", record)
