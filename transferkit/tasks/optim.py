"""Optimizer name -> torch optimizer over the param groups from `transferkit.tasks.finetune`."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

import torch

from transferkit.errors import ConfigError, construct, lookup

log = logging.getLogger(__name__)


def _sgd(groups: list[dict], o: dict) -> torch.optim.Optimizer:
    return torch.optim.SGD(groups, lr=o["lr"], momentum=o["momentum"], nesterov=o["nesterov"], fused=o["fused"])


def _adam(groups: list[dict], o: dict) -> torch.optim.Optimizer:
    return torch.optim.Adam(groups, lr=o["lr"], betas=o["betas"], eps=o["eps"], fused=o["fused"])


def _adamw(groups: list[dict], o: dict) -> torch.optim.Optimizer:
    return torch.optim.AdamW(groups, lr=o["lr"], betas=o["betas"], eps=o["eps"], fused=o["fused"])


def _rmsprop(groups: list[dict], o: dict) -> torch.optim.Optimizer:
    return torch.optim.RMSprop(groups, lr=o["lr"], momentum=o["momentum"], eps=o["eps"])


OPTIMIZERS: dict[str, Callable[[list[dict], dict], torch.optim.Optimizer]] = {
    "adamw": _adamw,
    "adam": _adam,
    "sgd": _sgd,
    "rmsprop": _rmsprop,
}
FUSED = {"adamw", "adam", "sgd"}  # torch has a fused (one kernel for all tensors) update for these
FUSED_VALUES = ("auto", True, False)


def check_optimizer(name: str = "adamw", lr: float = 1e-3, weight_decay: float = 0.01, momentum: float = 0.9,
                    nesterov: bool = False, betas: Sequence[float] = (0.9, 0.999), eps: float = 1e-8,
                    fused: bool | str = "auto") -> None:
    """The `optimizer` config group's values, checked when the run is planned: also where the plan never
    builds it (a solved head trains nothing by gradient). `lr` may be left out (`optimizer.lr=find`)."""
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
    lookup(OPTIMIZERS, name, key="optimizer.name")
    if fused not in FUSED_VALUES:
        raise ConfigError(f"optimizer.fused={fused!r} must be auto, true or false.")
    if fused is True and name not in FUSED:
        raise ConfigError(f"optimizer.fused=true: torch has no fused {name}; the fused ones are "
                          f"{', '.join(sorted(FUSED))}. Use optimizer.fused=auto.")


def check_optimizer_group(options: dict, lr_searched: bool = False) -> None:
    """The run's `optimizer` config group, checked when the run is planned, before anything is computed,
    whichever plan follows. Unknown keys are named; with `lr_searched` (`optimizer.lr=find`) the LR is
    the range test's to set."""
    options = {k: v for k, v in options.items() if not (lr_searched and k == "lr")}
    construct(check_optimizer, options, "optimizer")


def build_optimizer(
    param_groups: list[dict],
    name: str = "adamw",
    lr: float = 1e-3,
    weight_decay: float = 0.01,
    momentum: float = 0.9,
    nesterov: bool = False,
    betas: tuple[float, float] = (0.9, 0.999),
    eps: float = 1e-8,
    fused: bool | str = "auto",
    *,
    grad_scaler: bool = False,
    clips_gradients: bool = False,
) -> torch.optim.Optimizer:
    """Build the `optimizer` config group over `param_groups`.

    Each group's LR is `lr * group["lr_scale"]` (default 1); `weight_decay` applies to groups that
    do not set their own. The scale stays in the group so schedulers and plots can read it. For
    `adam` and `rmsprop` weight decay is L2 added to the gradient; `adamw` decouples it.

    `fused`: torch's fused update, one kernel over all tensors instead of a Python loop over them
    (AdamW on resnet10t's 44 tensors, on 2 CPU cores: 2.9 against 22 ms a step). `auto` uses it where
    torch has it for this optimizer and these parameters (adam, adamw, sgd; CPU and CUDA), `true`
    requires it, `false` keeps torch's default (a loop on CPU, `foreach` on GPUs).
    `grad_scaler`: fp16 training (`16-mixed`) scales the loss, and Lightning unscales the gradients
    before clipping and the callbacks that read them; a fused step unscales them itself, later. So
    `auto` does not fuse there, and `true` cannot go with `clips_gradients`.
    """
    check_optimizer(name, lr, weight_decay, momentum, nesterov, betas, eps, fused)
    factory = OPTIMIZERS[name]
    if fused is True and grad_scaler and clips_gradients:
        raise ConfigError("optimizer.fused=true cannot clip gradients under trainer.precision=16-mixed (the "
                          "fused step unscales them itself); use optimizer.fused=auto, bf16-mixed, or no "
                          "trainer.gradient_clip_val.")
    if not param_groups or not any(g["params"] for g in param_groups):
        raise ConfigError("No trainable parameters reach the optimizer; check the finetune strategy and the head.")
    groups = []
    for group in param_groups:
        scale = float(group.get("lr_scale", 1.0))
        groups.append({**group, "params": list(group["params"]), "lr": lr * scale, "lr_scale": scale,
                       "weight_decay": group.get("weight_decay", weight_decay)})
    opts = {"lr": lr, "momentum": momentum, "nesterov": nesterov, "betas": tuple(betas), "eps": eps}
    want = name in FUSED and not grad_scaler if fused == "auto" else bool(fused)
    optimizer = make_fused(factory, groups, opts) if want else None
    if optimizer is None and fused is True:
        raise ConfigError(f"optimizer.fused=true: torch has no fused {name} for these parameters "
                          f"({parameter_kinds(groups)}). Use optimizer.fused=auto.")
    if optimizer is None:
        optimizer = factory(groups, {**opts, "fused": None} if name in FUSED else opts)
    log.info("optimizer: %s lr=%g over %d param groups%s", name, lr, len(groups),
             " (fused)" if optimizer.defaults.get("fused") else "")
    return optimizer


def make_fused(factory, groups: list[dict], opts: dict) -> torch.optim.Optimizer | None:
    """The fused optimizer, or None where torch has no fused kernel for a parameter's device or
    dtype (torch itself would only say so at the first step)."""
    devices = fused_devices()
    if not all(p.is_floating_point() and p.device.type in devices for g in groups for p in g["params"]):
        return None
    return factory(groups, {**opts, "fused": True})


def fused_devices() -> set[str]:
    """The device types with fused optimizer kernels, as torch lists them."""
    try:
        from torch.utils._foreach_utils import _get_fused_kernels_supported_devices
    except ImportError:  # a torch that moved its private helper: the two that have had them since 2.4
        return {"cpu", "cuda"}
    return set(_get_fused_kernels_supported_devices())


def parameter_kinds(groups: list[dict]) -> str:
    kinds = sorted({f"{p.device.type} {str(p.dtype).removeprefix('torch.')}" for g in groups for p in g["params"]})
    return ", ".join(kinds)
