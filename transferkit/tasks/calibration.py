"""Calibration by temperature scaling (Guo et al. 2017): one scalar T, fitted after training on the
validation split's logits by L-BFGS on the negative log-likelihood; predictions then use softmax(logits / T).

T > 1 softens an over-confident network. Dividing by one positive scalar never changes the argmax, so
accuracy, the race and checkpoint selection (which score the raw logits) are untouched. This module is
the one place that applies a temperature: `predict`, `Run.predict`, exported models and `serve` call
`apply_temperature`. Imports only torch (no Lightning, no timm).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from transferkit.errors import lookup

CALIBRATIONS = ("temperature", "none")  # the `calibration` config key
META_FIELD = "temperature"  # model.meta.json's field (absent or null: 1.0, uncalibrated)
# T is searched as log T in this range: a collapse to 0 or an explosion would mean the
# validation logits carry no signal, not that the model is that far off.
LOG_T_RANGE = (-4.0, 4.0)


def check_calibration(value: str | None, kind: str = "classification") -> str:
    """The `calibration` value, validated; segmentation is never calibrated (`none`)."""
    method = lookup({c: c for c in CALIBRATIONS}, "none" if value is None else str(value), "calibration")
    return "none" if kind != "classification" else method


def apply_temperature(logits, temperature: float | None):
    """`logits / temperature` (torch tensor or numpy array); None or 1.0 leaves them as they are."""
    if temperature is None or float(temperature) == 1.0:
        return logits
    if float(temperature) <= 0 or not np.isfinite(float(temperature)):
        raise ValueError(f"temperature={temperature!r} must be a finite number > 0.")
    return logits / float(temperature)


def fit_temperature(logits: torch.Tensor, labels: torch.Tensor, max_iter: int = 100) -> float:
    """The T that minimises the mean NLL of `softmax(logits / T)` on `labels` (L-BFGS over log T, float64)."""
    if logits.ndim != 2 or len(logits) != len(labels) or len(labels) == 0:
        raise ValueError(f"fit_temperature needs N x C logits and N labels (got {tuple(logits.shape)} "
                         f"and {tuple(labels.shape)}).")
    z, y = logits.detach().double().cpu(), labels.detach().long().cpu()
    log_t = torch.zeros((), dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.LBFGS([log_t], lr=1.0, max_iter=max_iter, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = F.cross_entropy(z / log_t.clamp(*LOG_T_RANGE).exp(), y)
        loss.backward()
        return loss

    optimizer.step(closure)
    return float(log_t.detach().clamp(*LOG_T_RANGE).exp())
