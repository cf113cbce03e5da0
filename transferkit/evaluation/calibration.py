"""How well probabilities mean what they say, before and after temperature scaling (`calibration=temperature`):
expected calibration error (torchmetrics' `MulticlassCalibrationError`, L1, 15 equal-width bins of the
top-class confidence) and NLL, with bootstrap confidence intervals over the test images, and the
reliability diagram's bins.

A resample's ECE and NLL come from per-image terms: ECE_l1 = sum over bins |sum_{i in bin} (conf_i - correct_i)| / N,
so each bootstrap draw is one weighted sum (a draw's image counts times per-image terms), not a
metric call per draw; `tests/test_calibration.py` holds that to torchmetrics on the full set.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torchmetrics.functional.classification import multiclass_calibration_error

from transferkit.tasks.calibration import apply_temperature

N_BINS = 15
DRAWS = 1000
BOOTSTRAP_SEED = 0
KEYS = ("test/ece_uncalibrated", "test/ece", "test/nll_uncalibrated", "test/nll")


def expected_calibration_error(probs: torch.Tensor, labels: torch.Tensor) -> float:
    """ECE (L1, 15 bins) of N x C probabilities: torchmetrics' own computation."""
    return float(multiclass_calibration_error(probs.float(), labels.long(), num_classes=probs.shape[1],
                                              n_bins=N_BINS, norm="l1"))


def confidence_bins(probs: torch.Tensor) -> torch.Tensor:
    """Each image's bin of top-class confidence, with torchmetrics' boundaries (linspace, right-closed)."""
    boundaries = torch.linspace(0, 1, N_BINS + 1, dtype=probs.dtype)
    return (torch.bucketize(probs.max(dim=1).values, boundaries, right=True) - 1).clamp(0, N_BINS - 1)


def image_terms(logits: torch.Tensor, labels: torch.Tensor, temperature: float | None) -> dict[str, np.ndarray]:
    """Per image: its bin, confidence minus correctness (ECE's term) and its NLL, at `temperature`."""
    scaled = apply_temperature(logits.double(), temperature)
    probs = torch.softmax(scaled, dim=1).float()
    confidence, predicted = probs.max(dim=1)
    return {"bin": confidence_bins(probs).numpy(),
            "gap": (confidence.double() - (predicted == labels).double()).numpy(),
            "nll": F.cross_entropy(scaled, labels.long(), reduction="none").numpy()}


def weighted_scores(terms: dict[str, np.ndarray], weights: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """ECE and NLL of each row of `weights` (D x N image counts of a resample; a row of ones: the set)."""
    onehot = np.eye(N_BINS)[terms["bin"]]  # N x bins
    total = weights.sum(axis=1)
    ece = np.abs(weights @ (onehot * terms["gap"][:, None])).sum(axis=1) / total
    return ece, weights @ terms["nll"] / total


def bootstrap_weights(n: int, draws: int = DRAWS, seed: int = BOOTSTRAP_SEED) -> np.ndarray:
    """`draws` resamples of n images with replacement, as image counts (D x N); fixed seed."""
    rng = np.random.default_rng(seed)
    picks = rng.integers(0, n, size=(draws, n))
    return np.stack([np.bincount(row, minlength=n) for row in picks]).astype(np.float64)


def interval(values: np.ndarray) -> list[float]:
    return [round(float(np.percentile(values, 2.5)), 6), round(float(np.percentile(values, 97.5)), 6)]


def calibration_scores(logits: torch.Tensor, labels: torch.Tensor, temperature: float,
                       draws: int = DRAWS, seed: int = BOOTSTRAP_SEED) -> tuple[dict[str, float], dict[str, list[float]]]:
    """The four `test/...` metrics (ECE and NLL before and after `temperature`) and their 95 % bootstrap
    intervals, plus paired intervals of the drops (`test/ece_drop`, `test/nll_drop`: uncalibrated minus
    calibrated, the same resample for both) and of the relative ECE drop (`test/ece_drop_fraction`)."""
    raw, scaled = image_terms(logits, labels, None), image_terms(logits, labels, temperature)
    metrics = {
        "test/ece_uncalibrated": expected_calibration_error(torch.softmax(logits.double(), 1), labels),
        "test/ece": expected_calibration_error(torch.softmax(apply_temperature(logits.double(), temperature), 1), labels),
        "test/nll_uncalibrated": float(raw["nll"].mean()),
        "test/nll": float(scaled["nll"].mean()),
    }
    weights = bootstrap_weights(len(labels), draws, seed)
    (ece_raw, nll_raw), (ece_cal, nll_cal) = weighted_scores(raw, weights), weighted_scores(scaled, weights)
    ci = dict(zip(KEYS, map(interval, (ece_raw, ece_cal, nll_raw, nll_cal))))
    ci["test/ece_drop"] = interval(ece_raw - ece_cal)
    ci["test/nll_drop"] = interval(nll_raw - nll_cal)
    ci["test/ece_drop_fraction"] = interval((ece_raw - ece_cal) / np.maximum(ece_raw, 1e-12))
    return metrics, ci


def reliability_bins(logits: np.ndarray, labels: np.ndarray, temperature: float | None) -> list[dict]:
    """The reliability diagram's bins: images, mean confidence and accuracy per confidence bin."""
    terms = image_terms(torch.as_tensor(logits), torch.as_tensor(labels), temperature)
    probs = torch.softmax(apply_temperature(torch.as_tensor(logits).double(), temperature), dim=1)
    confidence = probs.max(dim=1).values.numpy()
    correct = confidence - terms["gap"]
    rows = []
    for b in range(N_BINS):
        inside = terms["bin"] == b
        count = int(inside.sum())
        rows.append({"low": b / N_BINS, "high": (b + 1) / N_BINS, "count": count,
                     "confidence": float(confidence[inside].mean()) if count else None,
                     "accuracy": float(correct[inside].mean()) if count else None})
    return rows
