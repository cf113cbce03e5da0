"""The LR of every param group over a whole planned run, without training (the `plot-lr` command).

The task's param groups, optimizer, scheduler and warm-up shortening are exactly those `fit` would
use; the schedule is stepped through `max_epochs x steps_per_epoch` optimizer steps, counted as
Lightning counts them. `transferkit.evaluation.reports.lr_plot` draws and tabulates the curves.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from transferkit.data.loader_settings import drops_last
from transferkit.planning.spec import RunSpec
from transferkit.tasks.base import fit_warmup
from transferkit.tasks.finetune import build_param_groups
from transferkit.tasks.optim import build_optimizer
from transferkit.tasks.schedulers import lr_curve


@dataclass(frozen=True)
class LRSchedule:
    """Each param group's LR at each optimizer step (`curves[group][step]`), and the group names."""

    curves: list[list[float]]
    names: list[str]
    steps_per_epoch: int
    max_epochs: int
    title: str


def steps_per_epoch(train_size: int, batch_size: int, trainer: dict, drop_last: bool = False) -> int:
    """Optimizer steps per epoch as Lightning counts them (limit_train_batches, accumulation)."""
    batches = train_size // batch_size if drop_last else math.ceil(train_size / batch_size)
    limit = trainer.get("limit_train_batches")
    if isinstance(limit, int) and not isinstance(limit, bool):
        batches = min(batches, limit)
    elif isinstance(limit, float):
        batches = int(batches * limit)
    accumulate = int(trainer.get("accumulate_grad_batches") or 1)
    return max(1, math.ceil(batches / accumulate))


def lr_schedule(task, spec: RunSpec, train_size: int) -> LRSchedule:
    """The schedule `fit` would step for `task` (built from `spec`) on `train_size` training images."""
    optimizer_cfg = spec.optimizer
    groups = build_param_groups(task.encoder, task.head, task.plan, weight_decay=optimizer_cfg.get("weight_decay", 0.0))
    optimizer = build_optimizer(groups, **optimizer_cfg)
    trainer = spec.trainer.flags
    max_epochs = int(trainer.get("max_epochs") or 1)
    batch_size = spec.data.batch_size
    drop_last = drops_last(spec.data.get("drop_last", "auto"), train_size, batch_size, None)
    steps = steps_per_epoch(train_size, batch_size, trainer, drop_last)
    schedule = fit_warmup(dict(spec.scheduler), max_epochs)
    curves = lr_curve(schedule, optimizer, max_epochs, steps)
    names = [g.get("name", f"group{i}") for i, g in enumerate(optimizer.param_groups)]
    title = f"{schedule.get('name')} / {optimizer_cfg.get('name')} / {task.plan.strategy}"
    return LRSchedule(curves, names, steps, max_epochs, title)
