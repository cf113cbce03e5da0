"""Scheduler name -> Lightning lr_scheduler config, with explicit epoch-vs-step semantics.

Every schedule is defined in **epochs** (`warmup_epochs`, `step_size`, `milestones`,
`restart_epochs`, ...). It is a multiplicative factor f(t) of each param group's base LR
(`optimizer.lr * lr_scale`), evaluated at t = epochs elapsed:

* `interval="epoch"`: the LR changes once per epoch, t = 0, 1, 2, ...
* `interval="step"`: the LR changes after every optimizer step, t = step / steps_per_epoch
  (fractional), so a step decay still falls on epoch boundaries while cosine is smooth.

A linear warm-up from `warmup_start_factor` to 1 over `warmup_epochs` comes first, and the main
schedule starts where it ends: f is evaluated at t - warmup_epochs, and cosine / one-cycle span
`max_epochs - warmup_epochs`. `plateau` (ReduceLROnPlateau) reacts to a metric once per epoch and
cannot be combined with a warm-up. `onecycle` has its own ramp-up (`pct_start`), so no warm-up either.
"""

from __future__ import annotations

import bisect
import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch.optim.lr_scheduler import LambdaLR, ReduceLROnPlateau

from transferkit.errors import ConfigError, lookup

log = logging.getLogger(__name__)

INTERVALS: tuple[str, ...] = ("step", "epoch")
# LeCun et al. 1998 (LeNet-5): 5e-4 for 2 epochs, 2e-4 for 3, 1e-4 for 3, 5e-5 for 4, then 1e-5,
# written as factors of the first rate (set optimizer.lr=5e-4 to reproduce it exactly).
LENET_MILESTONES: tuple[int, ...] = (2, 5, 8, 12)
LENET_FACTORS: tuple[float, ...] = (1.0, 0.4, 0.2, 0.1, 0.02)


@dataclass(frozen=True)
class ScheduleSpec:
    """The numbers a schedule's factor needs; `duration` = epochs after the warm-up."""

    name: str
    duration: float
    min_lr_scale: float = 0.0
    step_size: int = 10
    gamma: float = 0.1
    milestones: tuple[float, ...] = ()
    factors: tuple[float, ...] = ()
    restart_epochs: float = 10
    restart_mult: int = 1
    pct_start: float = 0.3
    div_factor: float = 25.0
    final_div_factor: float = 1e4
    warmup_epochs: float = 0.0
    warmup_start_factor: float = 0.01


def _cos(start: float, end: float, frac: float) -> float:
    return end + (start - end) * 0.5 * (1.0 + math.cos(math.pi * min(max(frac, 0.0), 1.0)))


def _sgdr(t: float, s: ScheduleSpec) -> float:
    """Cosine with warm restarts (Loshchilov & Hutter 2017): periods T0, T0*mult, T0*mult^2, ..."""
    period = s.restart_epochs
    if s.restart_mult == 1:
        t_cur = t % period
    else:
        cycle = math.floor(math.log(t / period * (s.restart_mult - 1) + 1, s.restart_mult))
        t_cur = t - period * (s.restart_mult**cycle - 1) / (s.restart_mult - 1)
        period = period * s.restart_mult**cycle
    return _cos(1.0, s.min_lr_scale, t_cur / period)


def _onecycle(t: float, s: ScheduleSpec) -> float:
    """Smith's one-cycle (torch OneCycleLR, cos): 1/div -> 1 over pct_start, then -> 1/(div*final_div)."""
    peak = s.pct_start * s.duration
    if t <= peak:
        return _cos(1.0 / s.div_factor, 1.0, t / peak)
    return _cos(1.0, 1.0 / (s.div_factor * s.final_div_factor), (t - peak) / (s.duration - peak))


FACTORS: dict[str, Callable[[float, ScheduleSpec], float]] = {
    "constant": lambda t, s: 1.0,
    "step": lambda t, s: s.gamma ** math.floor(t / s.step_size),
    "multistep": lambda t, s: s.gamma ** bisect.bisect_right(s.milestones, t),
    "lenet": lambda t, s: s.factors[bisect.bisect_right(s.milestones, t)],
    "exponential": lambda t, s: s.gamma**t,
    "cosine": lambda t, s: _cos(1.0, s.min_lr_scale, t / s.duration),
    "sgdr": _sgdr,
    "onecycle": _onecycle,
}
SCHEDULERS: tuple[str, ...] = (*FACTORS, "plateau")


def lr_factor(spec: ScheduleSpec, t: float) -> float:
    """LR multiplier at `t` epochs: linear warm-up, then the named schedule from t - warmup."""
    base = FACTORS[spec.name]
    if t < spec.warmup_epochs:
        ramp = spec.warmup_start_factor + (1.0 - spec.warmup_start_factor) * t / spec.warmup_epochs
        return ramp * base(0.0, spec)
    return base(t - spec.warmup_epochs, spec)


def _check_common(name: str, max_epochs: int, steps_per_epoch: int, interval: str, warmup_epochs: float,
                  warmup_start_factor: float, min_lr_scale: float) -> None:
    lookup(dict.fromkeys(SCHEDULERS), name, key="scheduler.name")
    lookup(dict.fromkeys(INTERVALS), interval, key="scheduler.interval")
    if max_epochs < 1 or steps_per_epoch < 1:
        raise ConfigError(f"trainer.max_epochs={max_epochs!r} and steps per epoch={steps_per_epoch!r} must be >= 1.")
    if not 0 <= warmup_epochs < max_epochs:
        raise ConfigError(f"scheduler.warmup_epochs={warmup_epochs!r} must lie in [0, max_epochs={max_epochs}).")
    if warmup_epochs and name in ("plateau", "onecycle"):
        raise ConfigError(
            f"scheduler.warmup_epochs={warmup_epochs!r} does not combine with scheduler.name={name!r} "
            "(plateau reacts to a metric; onecycle ramps up by itself via pct_start); set it to 0."
        )
    if not 0 <= warmup_start_factor <= 1:
        raise ConfigError(f"scheduler.warmup_start_factor={warmup_start_factor!r} must lie in [0, 1].")
    if not 0 <= min_lr_scale <= 1:
        raise ConfigError(f"scheduler.min_lr_scale={min_lr_scale!r} must lie in [0, 1].")


def _check_spec(s: ScheduleSpec) -> None:
    if s.name in ("step", "multistep", "exponential", "plateau") and not 0 < s.gamma <= 1:
        raise ConfigError(f"scheduler.gamma={s.gamma!r} must lie in (0, 1], e.g. 0.1.")
    if s.name == "step" and s.step_size < 1:
        raise ConfigError(f"scheduler.step_size={s.step_size!r} must be >= 1 epoch.")
    if list(s.milestones) != sorted(s.milestones) or any(m <= 0 for m in s.milestones):
        raise ConfigError(f"scheduler.milestones={list(s.milestones)!r} must be increasing epochs > 0.")
    if s.name == "lenet" and len(s.factors) != len(s.milestones) + 1:
        raise ConfigError(
            f"scheduler.factors={list(s.factors)!r} needs one more entry than "
            f"scheduler.milestones={list(s.milestones)!r} (one factor per piece)."
        )
    if s.name == "sgdr" and (s.restart_epochs <= 0 or s.restart_mult < 1 or int(s.restart_mult) != s.restart_mult):
        raise ConfigError(
            f"scheduler.restart_epochs={s.restart_epochs!r} must be > 0 and "
            f"scheduler.restart_mult={s.restart_mult!r} an integer >= 1."
        )
    if s.name == "onecycle" and not (0 < s.pct_start < 1 and s.div_factor >= 1 and s.final_div_factor >= 1):
        raise ConfigError(
            f"scheduler.pct_start={s.pct_start!r} must lie in (0, 1), scheduler.div_factor={s.div_factor!r} "
            f"and scheduler.final_div_factor={s.final_div_factor!r} must be >= 1."
        )


def build_scheduler(
    optimizer: torch.optim.Optimizer,
    *,
    name: str,
    max_epochs: int,
    steps_per_epoch: int,
    interval: str = "step",
    warmup_epochs: float = 0.0,
    warmup_start_factor: float = 0.01,
    min_lr_scale: float = 0.0,
    step_size: int = 10,
    gamma: float = 0.1,
    milestones: Sequence[float] | None = None,
    factors: Sequence[float] | None = None,
    restart_epochs: float = 10,
    restart_mult: int = 1,
    pct_start: float = 0.3,
    div_factor: float = 25.0,
    final_div_factor: float = 1e4,
    patience: int = 5,
    monitor: str = "val/loss",
    mode: str = "min",
) -> dict | None:
    """Build the `scheduler` config group as a Lightning lr_scheduler config dict.

    Returns None for `constant` without warm-up (nothing to schedule). `lenet` defaults to LeCun's
    milestones/factors; `milestones`/`factors` override them.
    """
    _check_common(name, max_epochs, steps_per_epoch, interval, warmup_epochs, warmup_start_factor, min_lr_scale)
    if name == "plateau":
        return _plateau(optimizer, gamma, patience, monitor, mode, min_lr_scale, interval)
    if name == "constant" and not warmup_epochs:
        return None
    if name == "lenet":
        milestones = LENET_MILESTONES if milestones is None else milestones
        factors = LENET_FACTORS if factors is None else factors
    spec = ScheduleSpec(
        name=name, duration=max_epochs - warmup_epochs, min_lr_scale=min_lr_scale, step_size=step_size,
        gamma=gamma, milestones=tuple(milestones or ()), factors=tuple(factors or ()),
        restart_epochs=restart_epochs, restart_mult=restart_mult, pct_start=pct_start, div_factor=div_factor,
        final_div_factor=final_div_factor, warmup_epochs=warmup_epochs, warmup_start_factor=warmup_start_factor,
    )
    _check_spec(spec)
    unit = steps_per_epoch if interval == "step" else 1
    # A closure, not a callable object: LambdaLR then keeps no custom class in checkpoints
    # (which torch.load(weights_only=True) would refuse); the schedule is rebuilt from config on resume.
    scheduler = LambdaLR(optimizer, lambda count: lr_factor(spec, count / unit))
    log.info("scheduler: %s per %s, warm-up %s epochs, over %d epochs", name, interval, warmup_epochs, max_epochs)
    return {"scheduler": scheduler, "interval": interval, "frequency": 1}


def _plateau(optimizer: torch.optim.Optimizer, gamma: float, patience: int, monitor: str, mode: str,
             min_lr_scale: float, interval: str) -> dict:
    lookup(dict.fromkeys(("min", "max")), mode, key="scheduler.mode")
    if not 0 < gamma < 1:
        raise ConfigError(f"scheduler.gamma={gamma!r} must lie in (0, 1) for plateau (the reduction factor).")
    if interval != "epoch":
        log.info("scheduler: plateau steps once per epoch on %s (scheduler.interval=%r ignored)", monitor, interval)
    min_lrs = [g["lr"] * min_lr_scale for g in optimizer.param_groups]
    scheduler = ReduceLROnPlateau(optimizer, mode=mode, factor=gamma, patience=patience, min_lr=min_lrs)
    return {"scheduler": scheduler, "interval": "epoch", "frequency": 1, "monitor": monitor}


def lr_curve(scheduler_cfg: dict, optimizer: torch.optim.Optimizer, max_epochs: int,
             steps_per_epoch: int) -> list[list[float]]:
    """LR of each param group at each optimizer step of the run, as Lightning would apply it.

    `scheduler_cfg` holds the `scheduler` config group (`name` + keys). The real optimizer is
    left untouched: a stand-in with the same group LRs is stepped. For `plateau` the metric is
    taken never to improve, which gives its fastest possible decay.
    """
    shadow = torch.optim.SGD(
        [{"params": [torch.zeros(1, requires_grad=True)], "lr": g["lr"]} for g in optimizer.param_groups]
    )
    config = build_scheduler(shadow, **scheduler_cfg, max_epochs=max_epochs, steps_per_epoch=steps_per_epoch)
    curves: list[list[float]] = [[] for _ in shadow.param_groups]
    for _ in range(max_epochs):
        for _ in range(steps_per_epoch):
            for curve, group in zip(curves, shadow.param_groups):
                curve.append(group["lr"])
            shadow.step()
            if config and config["interval"] == "step":
                config["scheduler"].step()
        if config and config["interval"] == "epoch":
            sched = config["scheduler"]
            sched.step(0.0) if isinstance(sched, ReduceLROnPlateau) else sched.step()
    return curves
