"""What every task shares: fine-tuning plan, frozen norms, optimizer and scheduler wiring."""

from __future__ import annotations

import logging

import pytorch_lightning as pl
import torch
import torch.nn as nn
from torchmetrics import MeanMetric

from transferkit.runtime.format import (FORMAT_KEY, FORMAT_VERSION, checkpoint_temperature, checkpoint_thresholds,
                                        migrate_checkpoint)
from transferkit.errors import ConfigError
from transferkit.tasks.finetune import (
    FinetunePlan,
    apply_strategy,
    build_param_groups,
    keep_frozen_norms_eval,
    sync_untracked_grads,
    tracked_param_ids,
)
from transferkit.models.speed import apply_channels_last, apply_compile, check_compile_mode, to_channels_last
from transferkit.tasks.optim import build_optimizer
from transferkit.tasks.regularization import check_l1, l1_penalty, l1_weights
from transferkit.tasks.schedulers import build_scheduler

log = logging.getLogger(__name__)


class BaseTask(pl.LightningModule):
    """A LightningModule with an `encoder` (the pretrained backbone) and a `head` (always trained).

    Subclasses build `self.encoder` and `self.head` and then call `self.setup_finetuning()`.
    """

    kind: str = ""  # task.kind of a subclass: classification | multilabel | segmentation
    monitor: str = "val/loss"
    monitor_mode: str = "min"

    def __init__(self, finetune: dict | None = None, optimizer: dict | None = None,
                 scheduler: dict | None = None, regularization: dict | None = None,
                 schedule_epochs: int | None = None, monitor: str | None = None) -> None:
        super().__init__()
        if monitor:  # checkpoint.monitor, or planning's choice (val/balanced_acc on long-tailed data)
            self.monitor, self.monitor_mode = str(monitor), monitor_mode(str(monitor))
        # The epochs the LR schedule spans. None = the trainer's max_epochs; a race leg (finetune=auto)
        # gives the full budget, so a leg trains a prefix of the schedule and the next leg continues it.
        self.schedule_epochs = schedule_epochs
        regularization = dict(regularization or {})
        unknown = sorted(set(regularization) - {"l1"})
        if unknown:
            raise ConfigError(f"regularization.{unknown[0]} is not an option; use regularization.l1.")
        self.l1 = check_l1(regularization.get("l1") or 0.0)
        self.plan = FinetunePlan(**(finetune or {}))
        if self.plan.strategy == "auto":
            raise ValueError(
                "finetune.strategy='auto' must be resolved before the task is built "
                "(the fit command measures the data and picks freeze/partial/full)."
            )
        self.optimizer_cfg = dict(optimizer or {})
        self.scheduler_cfg = dict(scheduler or {})

    encoder: nn.Module
    head: nn.Module
    temperature: float | None = None  # calibration, read from the checkpoint (tasks/calibration.py)
    thresholds: list[float] | None = None  # multi-label decision thresholds, read from the checkpoint

    channels_last: bool = False
    compile_mode: str | None = None
    compiles: bool = False

    def setup_speed(self, channels_last: bool = False, compile: bool = False,
                    compile_mode: str | None = None) -> None:
        """`model.channels_last` (weights and inputs NHWC now) and `model.compile` (at `setup`)."""
        self.channels_last, self.compiles = bool(channels_last), bool(compile)
        self.compile_mode = check_compile_mode(compile_mode)
        if self.channels_last:
            apply_channels_last(self)

    def prepare_input(self, x: torch.Tensor) -> torch.Tensor:
        """The image batch as the model wants it (channels last with `model.channels_last`)."""
        return to_channels_last(x) if self.channels_last else x

    def setup(self, stage: str) -> None:
        # Compiled once, in place, when a trainer first uses the task: loading, exporting and
        # predicting without a trainer keep the plain module.
        if self.compiles and not getattr(self, "_compiled", False):
            apply_compile(self.encoder, self.compile_mode)
            self._compiled = True

    def setup_finetuning(self) -> None:
        """Apply the strategy: set `requires_grad` and put frozen norms in eval mode."""
        apply_strategy(self.encoder, self.plan)

    def train(self, mode: bool = True) -> "BaseTask":
        # Frozen BatchNorm must stay in inference mode even when Lightning calls model.train().
        super().train(mode)
        if mode:
            keep_frozen_norms_eval(self.encoder)
        return self

    # Gradual unfreezing (finetune.unfreeze_at_epoch): param groups exist from the start (see
    # build_param_groups), requires_grad follows the epoch (so a resume restores it), and the
    # gradients of stages unfrozen after DDP wrapped the model are averaged here.
    def on_fit_start(self) -> None:
        self._ddp_tracked = tracked_param_ids(self)

    def on_train_epoch_start(self) -> None:
        if self.plan.unfreeze_at_epoch is not None:
            apply_strategy(self.encoder, self.plan, epoch=self.current_epoch)

    def on_after_backward(self) -> None:
        if self.plan.unfreeze_at_epoch is not None:
            sync_untracked_grads(self, getattr(self, "_ddp_tracked", tracked_param_ids(self)))

    def regularized(self, loss: torch.Tensor, batch_size: int) -> torch.Tensor:
        """The training loss plus `regularization.l1` x sum|w| of the trainable weights (logged as
        `train/l1`; `train/loss` stays the data loss, comparable with `val/loss`)."""
        if not self.l1:
            return loss
        penalty = self.l1 * l1_penalty(l1_weights(self.encoder, self.head)).to(loss.device)
        self.log("train/l1", penalty, on_step=True, on_epoch=True, batch_size=batch_size)
        return loss + penalty

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["transferkit_task"] = type(self).__name__  # lets `load_task` pick the class
        checkpoint[FORMAT_KEY] = FORMAT_VERSION

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        migrate_checkpoint(checkpoint)  # older formats read through the one migration
        # The calibration temperature fitted after training (None: none); predict applies it, nothing
        # else reads it, and checkpoints saved by a later fit do not carry it over (it would be stale).
        self.temperature = checkpoint_temperature(checkpoint)
        self.thresholds = checkpoint_thresholds(checkpoint)  # multi-label's tuned thresholds (None: 0.5)

    def num_params(self) -> dict[str, int]:
        params = list(self.parameters())
        return {"total": sum(p.numel() for p in params),
                "trainable": sum(p.numel() for p in params if p.requires_grad)}

    def steps_per_epoch(self) -> tuple[int, int]:
        """(epochs of the schedule, optimizer steps per epoch) as the trainer will run them."""
        trainer = self.trainer
        total = int(trainer.estimated_stepping_batches)
        trainer_epochs = trainer.max_epochs if trainer.max_epochs and trainer.max_epochs > 0 else 1
        return self.schedule_epochs or trainer_epochs, max(1, total // trainer_epochs)

    def configure_optimizers(self):
        if self.plan.solves_head:  # solved, never stepped: see ClassificationTask._solved_head_step
            return torch.optim.SGD(self.head.parameters(), lr=0.0)
        weight_decay = self.optimizer_cfg.get("weight_decay", 0.0)
        groups = build_param_groups(self.encoder, self.head, self.plan, weight_decay=weight_decay)
        trainer = self.trainer
        optimizer = build_optimizer(groups, **self.optimizer_cfg, grad_scaler=trainer.precision == "16-mixed",
                                    clips_gradients=bool(trainer.gradient_clip_val))
        max_epochs, steps_per_epoch = self.steps_per_epoch()
        schedule = fit_warmup(self.scheduler_cfg, max_epochs)
        scheduler = build_scheduler(optimizer, **schedule, max_epochs=max_epochs,
                                    steps_per_epoch=steps_per_epoch)
        if scheduler is None:
            return optimizer
        return {"optimizer": optimizer, "lr_scheduler": scheduler}


def monitor_mode(monitor: str) -> str:
    """Whether the selection metric is best low (a loss) or high (accuracy, F1, mIoU, mAP)."""
    return "min" if monitor.rsplit("/", 1)[-1].endswith("loss") else "max"


def build_eval_losses() -> nn.ModuleDict:
    """`val/loss` and `test/loss` as torchmetrics means: their sums and counts add up over DDP ranks
    exactly. (`self.log(..., sync_dist=True)` averages the per-rank image counts as integers, which
    is off whenever the ranks hold different numbers of images: transferkit.data.eval_sampler.)"""
    return nn.ModuleDict({"val": MeanMetric(), "test": MeanMetric()})


def fit_warmup(schedule: dict, max_epochs: int) -> dict:
    """Shorten a warm-up that would fill the whole run (e.g. a quick `trainer.max_epochs=1`)."""
    warmup = schedule.get("warmup_epochs") or 0
    if warmup < max_epochs:
        return schedule
    shorter = max_epochs / 4
    log.warning("scheduler.warmup_epochs=%s >= trainer.max_epochs=%s; warming up for %.2f epochs instead.",
                warmup, max_epochs, shorter)
    return {**schedule, "warmup_epochs": shorter}
