"""A race leg's own learning-rate schedule: it warms up and anneals within the leg (epochs start..end),
so the score at a cut is the score of a finished short run, and a survivor's next leg is a warm
restart (SGDR-style: the weights and the optimizer's moments carry on, the LR schedule starts again).
"""

from __future__ import annotations

import pytorch_lightning as pl
import torch
from torch.optim.lr_scheduler import LambdaLR

from transferkit.tasks.base import fit_warmup
from transferkit.tasks.schedulers import build_scheduler


class LegSchedule(pl.Callback):
    """Replace the task's schedule (built over the whole run) by the configured schedule over this
    leg's epochs `start..end`, counted from the leg's first step. Schedules that are not a function
    of the step (`scheduler=plateau`) are left as they are."""

    def __init__(self, start: int, end: int) -> None:
        self.start, self.end = start, end

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.end <= self.start:  # a finished leg re-attached: nothing left to train
            return
        steps_per_epoch = pl_module.steps_per_epoch()[1]
        for config in trainer.lr_scheduler_configs:
            if isinstance(config.scheduler, LambdaLR):
                unit = steps_per_epoch if config.interval == "step" else 1
                factor = leg_factor(pl_module.scheduler_cfg, self.end - self.start, steps_per_epoch)
                shift(config.scheduler, factor, self.start * unit)


def leg_factor(scheduler: dict, epochs: int, steps_per_epoch: int):
    """The LR factor of the configured schedule over `epochs` epochs, as a function of its step count."""
    probe = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1.0)  # the schedule alone, no model
    built = build_scheduler(probe, **{**fit_warmup(scheduler, epochs), "max_epochs": epochs,
                                      "steps_per_epoch": steps_per_epoch})
    return built["scheduler"].lr_lambdas[0] if built is not None else (lambda count: 1.0)  # constant


def shift(scheduler: LambdaLR, factor, offset: int) -> None:
    """Make `scheduler` follow `factor` from step `offset` on, and set the LR of the coming step."""
    scheduler.lr_lambdas = [lambda count, f=factor: f(count - offset)] * len(scheduler.base_lrs)
    now = [base * factor(scheduler.last_epoch - offset) for base in scheduler.base_lrs]
    for group, lr in zip(scheduler.optimizer.param_groups, now):
        group["lr"] = lr
    scheduler._last_lr = now  # what get_last_lr() reports (the LR monitor, the console)
