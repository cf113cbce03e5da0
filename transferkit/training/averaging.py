"""Averaged weights: `ema.decay` (an exponential moving average, timm's `ModelEmaV3`) and `swa.*`
(stochastic weight averaging of the trainable parameters, `torch.optim.swa_utils`).

EMA: validation swaps the averaged weights in, and every checkpoint's `state_dict` holds them (so
best.ckpt, `test`, `predict` and export use them); the raw training weights ride along in the
callback's own state, so a resumed run trains on from them.

SWA: from `swa.epoch_start` on, the parameters the optimizer holds are averaged at the end of each
epoch (at `swa.lr`, when given). In the last epoch, before its validation, the average replaces them
and only the trainable norm layers' running statistics are recomputed on the training data. Frozen
layers keep their weights and their BatchNorm statistics (Lightning's `StochasticWeightAveraging`
resets every BatchNorm, frozen ones too).
"""

from __future__ import annotations

import logging

import pytorch_lightning as pl
import torch
import torch.distributed as dist
import torch.nn as nn
from torch.optim.swa_utils import SWALR, get_swa_multi_avg_fn
from torch.utils.data import DataLoader

from transferkit.errors import ConfigError
from transferkit.tasks.finetune import trainable_norms

log = logging.getLogger(__name__)


def is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def build_averaging_callbacks(ema: dict | None, swa: dict | None) -> list[pl.Callback]:
    """The callbacks of the `ema` and `swa` config groups (none when both are off)."""
    decay = (ema or {}).get("decay")
    start, lr = (swa or {}).get("epoch_start"), (swa or {}).get("lr")
    if decay is not None and start is not None:
        raise ConfigError(f"ema.decay={decay!r} and swa.epoch_start={start!r}: both average the weights; "
                          "choose one (set the other to null).")
    if start is None and lr is not None:
        raise ConfigError(f"swa.lr={lr!r} needs swa.epoch_start (the epoch averaging starts), e.g. swa.epoch_start=5.")
    if decay is not None:
        return [EMACallback(decay)]
    if start is not None:
        return [TrainableSWA(start, lr)]
    return []


def network(task: pl.LightningModule) -> nn.ModuleDict:
    """The task's weights as one module whose state-dict keys are the task's own (`encoder.*`, `head.*`)."""
    return nn.ModuleDict({"encoder": task.encoder, "head": task.head})


def cloned_state(module: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


class EMACallback(pl.Callback):
    """`ema.decay`: keep an exponential moving average of the task's weights, updated every optimizer
    step; validate and checkpoint it."""

    def __init__(self, decay: float) -> None:
        if not is_number(decay) or not 0.0 < decay < 1.0:
            raise ConfigError(f"ema.decay={decay!r} must lie in (0, 1), e.g. 0.999 (or null: off).")
        self.decay = float(decay)
        self.ema = None                      # timm.utils.ModelEmaV3 of network(task)
        self.net: nn.Module | None = None    # network(task) while training
        self.raw: dict | None = None         # the training weights while the average is swapped in
        self.final_raw: dict | None = None   # the training weights at the end (the task then holds the average)
        self._resumed_raw: dict | None = None
        self._last_step = -1

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        from timm.utils import ModelEmaV3

        # After a resume the model holds the checkpoint's state_dict: the average. It seeds the EMA,
        # then the raw weights the run trained on come back (LinearProbeCallback ran before this).
        net = self.net = network(pl_module)
        self.ema = ModelEmaV3(net, decay=self.decay)
        if self._resumed_raw is not None:
            net.load_state_dict(self._resumed_raw)
            self._resumed_raw = None
        self._last_step = trainer.global_step

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs, batch,
                           batch_idx: int) -> None:
        if self.ema is None or trainer.global_step == self._last_step:  # no optimizer step (accumulating)
            return
        self._last_step = trainer.global_step
        self.ema.update(network(pl_module), step=trainer.global_step)

    def on_validation_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.ema is None or trainer.sanity_checking or self.raw is not None:
            return
        net = network(pl_module)
        self.raw = cloned_state(net)
        net.load_state_dict(self.ema.module.state_dict())

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.raw is not None:
            network(pl_module).load_state_dict(self.raw)
            self.raw = None

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """The trained task is the average (what its checkpoints hold)."""
        if self.ema is not None:
            self.final_raw = cloned_state(self.net)
            self.net.load_state_dict(self.ema.module.state_dict())
            self.ema = self.net = None

    def on_save_checkpoint(self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict) -> None:
        if self.ema is None:
            return
        checkpoint["state_dict"].update({k: v.detach().clone() for k, v in self.ema.module.state_dict().items()})

    def state_dict(self) -> dict:
        if self.ema is None:
            return {"decay": self.decay}
        return {"decay": self.decay, "raw": self.raw if self.raw is not None else cloned_state(self.net)}

    def load_state_dict(self, state_dict: dict) -> None:
        self._resumed_raw = state_dict.get("raw") or None


class TrainableSWA(pl.Callback):
    """`swa.epoch_start`, `swa.lr`: average the optimizer's parameters over the last epochs, then
    recompute the trainable norms' statistics; frozen layers are never touched."""

    def __init__(self, epoch_start: int | float, lr: float | None = None) -> None:
        integral = is_number(epoch_start) and float(epoch_start).is_integer() and epoch_start >= 0
        if not (integral or is_number(epoch_start) and 0 < epoch_start < 1):
            raise ConfigError(f"swa.epoch_start={epoch_start!r} must be an epoch (0, 1, 2, ...) or a fraction "
                              "of trainer.max_epochs in (0, 1), e.g. 0.75 (or null: off).")
        if lr is not None and not (is_number(lr) and lr > 0):
            raise ConfigError(f"swa.lr={lr!r} must be > 0 (the head's LR while averaging), or null to keep the schedule.")
        self.epoch_start, self.lr = epoch_start, lr
        self.start: int | None = None
        self.averages: list[torch.Tensor] | None = None
        self.n_averaged = 0
        self.applied = False
        self.recomputed: list[str] = []  # names of the norm layers whose statistics were recomputed

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        epochs = trainer.max_epochs if trainer.max_epochs and trainer.max_epochs > 0 else 0
        fraction = 0 < self.epoch_start < 1
        start = int(self.epoch_start * epochs) if fraction else int(self.epoch_start)
        if start > epochs - 1:
            raise ConfigError(f"swa.epoch_start={self.epoch_start!r} is at or after the last epoch "
                              f"(trainer.max_epochs={trainer.max_epochs}); averaging needs an epoch to start in.")
        self.start = start

    @staticmethod
    def params(trainer: pl.Trainer) -> list[torch.Tensor]:
        """What the optimizer trains (frozen stages are not in it; see finetune.build_param_groups)."""
        return [p for group in trainer.optimizers[0].param_groups for p in group["params"]]

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.lr is None or self.start is None or trainer.current_epoch < self.start:
            return
        if any(isinstance(c.scheduler, SWALR) for c in trainer.strategy.lr_scheduler_configs):
            return
        from pytorch_lightning.utilities.types import LRSchedulerConfig

        optimizer = trainer.optimizers[0]
        lrs = [self.lr * float(group.get("lr_scale", 1.0)) for group in optimizer.param_groups]
        trainer.strategy.lr_scheduler_configs = [LRSchedulerConfig(SWALR(optimizer, swa_lr=lrs, anneal_epochs=0))]
        log.info("SWA: from epoch %d, constant LR %g (head) with each group's scale", trainer.current_epoch, self.lr)

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs, batch,
                           batch_idx: int) -> None:
        if self.start is None or trainer.current_epoch < self.start:
            return
        if not trainer.fit_loop.epoch_loop.batch_progress.is_last_batch:
            return
        self.update(self.params(trainer))
        if trainer.current_epoch == trainer.max_epochs - 1:  # validate the average in this last epoch
            self.apply(trainer, pl_module)

    @torch.no_grad()
    def update(self, params: list[torch.Tensor]) -> None:
        if self.averages is None:
            self.averages = [p.detach().clone() for p in params]
        else:
            self.averages = [a.to(p.device) for a, p in zip(self.averages, params)]
            get_swa_multi_avg_fn()(self.averages, [p.detach() for p in params],
                                   torch.tensor(self.n_averaged, device=params[0].device))
        self.n_averaged += 1

    @torch.no_grad()
    def apply(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        for param, average in zip(self.params(trainer), self.averages or []):
            param.copy_(average)
        self.applied = True
        self.recomputed = recompute_trainable_norms(pl_module, trainer)
        log.info("SWA: averaged %d epochs of %d parameter tensors; recomputed the statistics of %d "
                 "trainable norm layers (frozen ones untouched)", self.n_averaged, len(self.averages or []),
                 len(self.recomputed))

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not self.applied and self.n_averaged:
            log.warning("SWA: the run stopped before its last epoch (early stopping, max_steps or max_time); "
                        "its checkpoints hold the weights of the last epoch, not the average of %d epochs.",
                        self.n_averaged)

    def state_dict(self) -> dict:
        return {"n_averaged": self.n_averaged, "averages": self.averages, "applied": self.applied}

    def load_state_dict(self, state_dict: dict) -> None:
        self.n_averaged = int(state_dict.get("n_averaged", 0))
        self.averages = state_dict.get("averages")
        self.applied = bool(state_dict.get("applied", False))


@torch.no_grad()
def recompute_trainable_norms(task: pl.LightningModule, trainer: pl.Trainer) -> list[str]:
    """Reset and recompute, over one pass of the training data, the running statistics of the norm
    layers that train (averaged over ranks under DDP). Frozen norms stay as they are. Returns the
    names of the layers recomputed."""
    net = network(task)
    norms = {id(m) for m in trainable_norms(task.encoder)} | {id(m) for m in trainable_norms(task.head)}
    named = [(n, m) for n, m in net.named_modules() if id(m) in norms]
    if not named:
        return []
    momenta = {}
    for _, module in named:
        module.reset_running_stats()
        momenta[module], module.momentum = module.momentum, None  # None: a cumulative average
    was_training = task.training
    task.train()  # BaseTask.train keeps frozen norms in eval mode
    plugin = trainer.precision_plugin
    try:
        for batch in fresh_loader(trainer.train_dataloader):
            x = batch[0] if isinstance(batch, (list, tuple)) else batch
            with plugin.forward_context():
                task(plugin.convert_input(x.to(task.device)))
    finally:
        for module, momentum in momenta.items():
            module.momentum = momentum
        task.train(was_training)
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        for _, module in named:
            for stat in (module.running_mean, module.running_var):
                dist.all_reduce(stat)
                stat /= dist.get_world_size()
    return [n for n, _ in named]


def fresh_loader(loader: DataLoader) -> DataLoader:
    """The same data, batches and (distributed) sampler as `loader`, without touching its iterator
    (a persistent-worker loader would restart the epoch in progress)."""
    return DataLoader(loader.dataset, batch_size=loader.batch_size, sampler=loader.sampler,
                      num_workers=loader.num_workers, collate_fn=loader.collate_fn, drop_last=loader.drop_last)
