"""Optimizer name -> torch optimizer over the param groups from `transferkit.finetune`."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

import torch

from transferkit.errors import ConfigError, lookup

log = logging.getLogger(__name__)


def _sgd(groups: list[dict], o: dict) -> torch.optim.Optimizer:
    return torch.optim.SGD(groups, lr=o["lr"], momentum=o["momentum"], nesterov=o["nesterov"])


def _adam(groups: list[dict], o: dict) -> torch.optim.Optimizer:
    return torch.optim.Adam(groups, lr=o["lr"], betas=o["betas"], eps=o["eps"])


def _adamw(groups: list[dict], o: dict) -> torch.optim.Optimizer:
    return torch.optim.AdamW(groups, lr=o["lr"], betas=o["betas"], eps=o["eps"])


def _rmsprop(groups: list[dict], o: dict) -> torch.optim.Optimizer:
    return torch.optim.RMSprop(groups, lr=o["lr"], momentum=o["momentum"], eps=o["eps"])


OPTIMIZERS: dict[str, Callable[[list[dict], dict], torch.optim.Optimizer]] = {
    "adamw": _adamw,
    "adam": _adam,
    "sgd": _sgd,
    "rmsprop": _rmsprop,
}


def _check(lr: float, weight_decay: float, momentum: float, nesterov: bool, betas: Sequence[float], eps: float) -> None:
    if not lr > 0:
        raise ConfigError(f"optimizer.lr={lr!r} must be > 0 (e.g. 1e-3).")
    if weight_decay < 0:
        raise ConfigError(f"optimizer.weight_decay={weight_decay!r} must be >= 0.")
    if not 0 <= momentum < 1:
        raise ConfigError(f"optimizer.momentum={momentum!r} must lie in [0, 1), e.g. 0.9.")
    if nesterov and momentum == 0:
        raise ConfigError("optimizer.nesterov=True needs optimizer.momentum > 0 (e.g. 0.9).")
    if len(betas) != 2 or not all(0 <= b < 1 for b in betas):
        raise ConfigError(f"optimizer.betas={list(betas)!r} must be two numbers in [0, 1), e.g. [0.9, 0.999].")
    if not eps > 0:
        raise ConfigError(f"optimizer.eps={eps!r} must be > 0 (e.g. 1e-8).")


def build_optimizer(
    param_groups: list[dict],
    name: str = "adamw",
    lr: float = 1e-3,
    weight_decay: float = 0.01,
    momentum: float = 0.9,
    nesterov: bool = False,
    betas: tuple[float, float] = (0.9, 0.999),
    eps: float = 1e-8,
) -> torch.optim.Optimizer:
    """Build the `optimizer` config group over `param_groups`.

    Each group's LR is `lr * group["lr_scale"]` (default 1); `weight_decay` applies to groups that
    do not set their own. The scale stays in the group so schedulers and plots can read it. For
    `adam` and `rmsprop` weight decay is L2 added to the gradient; `adamw` decouples it.
    """
    _check(lr, weight_decay, momentum, nesterov, betas, eps)
    factory = lookup(OPTIMIZERS, name, key="optimizer.name")
    if not param_groups or not any(g["params"] for g in param_groups):
        raise ConfigError("No trainable parameters reach the optimizer; check the finetune strategy and the head.")
    groups = []
    for group in param_groups:
        scale = float(group.get("lr_scale", 1.0))
        groups.append({**group, "params": list(group["params"]), "lr": lr * scale, "lr_scale": scale,
                       "weight_decay": group.get("weight_decay", weight_decay)})
    opts = {"lr": lr, "momentum": momentum, "nesterov": nesterov, "betas": tuple(betas), "eps": eps}
    optimizer = factory(groups, opts)
    log.info("optimizer: %s lr=%g over %d param groups", name, lr, len(groups))
    return optimizer
