"""Solve a linear classifier head on fixed features: L2-regularised multinomial logistic regression.

Full-batch L-BFGS (torch) on standardised features, with the regularisation strength C chosen by
seeded, stratified k-fold cross-validation over `C_GRID`; the mean and std are folded back into
the weight and bias, so the result drops into a single `nn.Linear` that sees raw features. The
objective is scikit-learn's `LogisticRegression(C=C)`: C x summed cross-entropy + |W|^2 / 2, no
penalty on the bias (here divided by C n, so the loss is a mean and tolerances do not depend on n).
No Lightning here: `tasks/linear_probe.py` wires it into training.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

log = logging.getLogger(__name__)

C_GRID: tuple[float, ...] = (0.001, 0.01, 0.1, 1.0, 10.0, 100.0)  # strongest regularisation first (warm starts)
DEFAULT_C = 1.0   # when no class has 2 images to cross-validate with
FOLDS = 5
MAX_ITER = 500
ONE_THREAD_BELOW = 2**23  # features (N x D) below which one thread is faster than several


@dataclass(frozen=True)
class HeadSolution:
    """A solved head for raw features: logits = features @ weight.T + bias."""

    weight: np.ndarray                 # num_classes x dim, float32
    bias: np.ndarray                   # num_classes, float32
    c: float                           # the chosen inverse regularisation strength
    folds: int                         # cross-validation folds (0: C was not cross-validated)
    cv_acc: dict[float, float] = field(default_factory=dict)   # C -> mean held-out accuracy
    cv_loss: dict[float, float] = field(default_factory=dict)  # C -> mean held-out cross-entropy
    seconds: float = 0.0

    def to_dict(self) -> dict:
        return {"solver": "lbfgs", "c": self.c, "folds": self.folds, "seconds": round(self.seconds, 3),
                "cv_acc": {str(c): round(a, 4) for c, a in self.cv_acc.items()},
                "cv_loss": {str(c): round(v, 4) for c, v in self.cv_loss.items()},
                "dim": int(self.weight.shape[1])}


@contextmanager
def threads_for(size: int) -> Iterator[None]:
    """Run a solve on one thread when it is small: each L-BFGS step is a tiny matmul, and fork/join
    across threads (on a shared machine) costs more than it saves. Restores the thread count."""
    before = torch.get_num_threads()
    if size < ONE_THREAD_BELOW:
        torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def choose_folds(labels: np.ndarray, folds: int = FOLDS) -> int:
    """Folds for stratified cross-validation: fewer when a class has fewer images; 0 below 2 per class."""
    counts = np.bincount(labels)
    smallest = int(counts[counts > 0].min()) if len(labels) else 0
    return min(folds, smallest) if smallest >= 2 else 0


def fit_logistic(features: torch.Tensor, labels: torch.Tensor, num_classes: int, c: float,
                 start: torch.Tensor | None = None, class_weights: torch.Tensor | None = None,
                 label_smoothing: float = 0.0, max_iter: int = MAX_ITER) -> torch.Tensor:
    """(dim + 1) x num_classes weights (last row: bias) minimising the regularised mean cross-entropy."""
    n, dim = features.shape
    params = (torch.zeros(dim + 1, num_classes, dtype=features.dtype) if start is None
              else start.clone()).requires_grad_(True)
    optimizer = torch.optim.LBFGS([params], lr=1.0, max_iter=max_iter, history_size=10, tolerance_grad=1e-5,
                                  tolerance_change=1e-9, line_search_fn="strong_wolfe")
    penalty = 0.5 / (c * n)

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        logits = features @ params[:-1] + params[-1]
        if labels.ndim == 2:  # multi-label: one logistic regression per class (their losses add up)
            loss = F.binary_cross_entropy_with_logits(logits, labels, pos_weight=class_weights,
                                                      reduction="none").sum(1).mean()
        else:
            loss = F.cross_entropy(logits, labels, weight=class_weights, label_smoothing=label_smoothing)
        loss = loss + penalty * params[:-1].pow(2).sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        optimizer.step(closure)
    return params.detach()


def cross_validate(features: torch.Tensor, labels: np.ndarray, num_classes: int, folds: int, seed: int,
                   grid: tuple[float, ...], **fit_options) -> tuple[dict[float, float], dict[float, float]]:
    """Mean held-out accuracy and cross-entropy per C; each fold walks the grid with warm starts."""
    from sklearn.model_selection import StratifiedKFold  # imported here: a second to import, rarely used

    acc: dict[float, list[float]] = {c: [] for c in grid}
    loss: dict[float, list[float]] = {c: [] for c in grid}
    target = torch.from_numpy(labels)
    splitter = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
    for train, held in splitter.split(np.zeros(len(labels)), labels):
        params = None
        for c in grid:
            params = fit_logistic(features[train], target[train], num_classes, c, params, **fit_options)
            logits = features[held] @ params[:-1] + params[-1]
            acc[c].append(float((logits.argmax(1) == target[held]).float().mean()))
            loss[c].append(float(F.cross_entropy(logits, target[held])))
    return {c: float(np.mean(v)) for c, v in acc.items()}, {c: float(np.mean(v)) for c, v in loss.items()}


def choose_c(cv_acc: dict[float, float], cv_loss: dict[float, float]) -> float:
    """The C with the best held-out accuracy; ties go to the lower held-out cross-entropy."""
    return min(cv_acc, key=lambda c: (-round(cv_acc[c], 9), cv_loss[c]))


def solve_linear_head(features: np.ndarray, labels: np.ndarray, num_classes: int, seed: int = 0, *,
                      folds: int = FOLDS, grid: tuple[float, ...] = C_GRID,
                      class_weights: list[float] | None = None, label_smoothing: float = 0.0) -> HeadSolution:
    """Fit the head on `features` (N x D) and integer `labels`, C chosen by stratified k-fold CV.

    `folds` shrinks to the smallest class's image count; below 2 per class, C is `DEFAULT_C`.
    """
    start = time.perf_counter()
    x = np.asarray(features, dtype=np.float32)
    y = np.asarray(labels, dtype=np.int64)
    if x.ndim != 2 or len(x) != len(y) or not len(y):
        raise ValueError(f"solve_linear_head needs N x D features and N labels, got {x.shape} and {y.shape}.")
    if y.min() < 0 or y.max() >= num_classes:
        raise ValueError(f"labels must lie in [0, {num_classes}); got {y.min()}..{y.max()}.")
    mean, std = x.mean(0), x.std(0)
    std = np.where(std > 1e-6, std, 1.0).astype(np.float32)  # constant features keep weight 0 anyway
    scaled = torch.from_numpy((x - mean) / std)
    weights = torch.tensor(class_weights, dtype=torch.float32) if class_weights else None
    options = {"class_weights": weights, "label_smoothing": label_smoothing}
    k = choose_folds(y, folds)
    if not k:
        log.warning("Head solver: a class has fewer than 2 training images; C=%g without cross-validation.",
                    DEFAULT_C)
    with threads_for(x.size):
        cv_acc, cv_loss = cross_validate(scaled, y, num_classes, k, seed, grid, **options) if k else ({}, {})
        c = choose_c(cv_acc, cv_loss) if k else DEFAULT_C
        params = fit_logistic(scaled, torch.from_numpy(y), num_classes, c, **options).numpy()
    weight = (params[:-1] / std[:, None]).T          # W' = W / std
    bias = params[-1] - (mean / std) @ params[:-1]   # b' = b - (mean / std) W
    return HeadSolution(weight.astype(np.float32), bias.astype(np.float32), float(c), k, cv_acc, cv_loss,
                        time.perf_counter() - start)


def solve_multilabel_head(features: np.ndarray, hot: np.ndarray, seed: int = 0, *, folds: int = FOLDS,
                          grid: tuple[float, ...] = C_GRID, pos_weight: list[float] | None = None) -> HeadSolution:
    """One-vs-rest logistic heads (one sigmoid per class) on `features` (N x D) and multi-hot `hot` (N x C),
    one C for all classes chosen by shuffled k-fold CV on the held-out summed BCE. `cv_acc` holds the
    held-out share of right label decisions at 0.5."""
    from sklearn.model_selection import KFold  # lazy: as in cross_validate

    start = time.perf_counter()
    x, y = np.asarray(features, dtype=np.float32), np.asarray(hot, dtype=np.float32)
    if x.ndim != 2 or y.ndim != 2 or len(x) != len(y) or not len(y):
        raise ValueError(f"solve_multilabel_head needs N x D features and N x C targets, got {x.shape}, {y.shape}.")
    mean, std = x.mean(0), x.std(0)
    std = np.where(std > 1e-6, std, 1.0).astype(np.float32)
    scaled, target = torch.from_numpy((x - mean) / std), torch.from_numpy(y)
    weights = torch.tensor(pos_weight, dtype=torch.float32) if pos_weight else None
    k = min(folds, len(y)) if len(y) >= 2 else 0
    acc: dict[float, list[float]] = {c: [] for c in grid}
    loss: dict[float, list[float]] = {c: [] for c in grid}
    with threads_for(x.size):
        for train, held in (KFold(n_splits=k, shuffle=True, random_state=seed).split(y) if k else []):
            params = None
            for c in grid:
                params = fit_logistic(scaled[train], target[train], y.shape[1], c, params, class_weights=weights)
                logits = scaled[held] @ params[:-1] + params[-1]
                acc[c].append(float(((logits > 0).float() == target[held]).float().mean()))
                loss[c].append(float(F.binary_cross_entropy_with_logits(logits, target[held], reduction="none")
                                     .sum(1).mean()))
        cv_acc = {c: float(np.mean(v)) for c, v in acc.items() if v}
        cv_loss = {c: float(np.mean(v)) for c, v in loss.items() if v}
        c = min(cv_loss, key=lambda value: (round(cv_loss[value], 9), -value)) if k else DEFAULT_C
        params = fit_logistic(scaled, target, y.shape[1], c, class_weights=weights).numpy()
    weight = (params[:-1] / std[:, None]).T
    bias = params[-1] - (mean / std) @ params[:-1]
    return HeadSolution(weight.astype(np.float32), bias.astype(np.float32), float(c), k, cv_acc, cv_loss,
                        time.perf_counter() - start)
