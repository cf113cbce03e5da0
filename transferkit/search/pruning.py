"""Stop a search trial whose validation metric is unpromising (Optuna's pruner decides)."""

from __future__ import annotations

import logging

import pytorch_lightning as pl

log = logging.getLogger("transferkit")


class PruneOnValidation(pl.Callback):
    """After each validation, report `monitor` to the Optuna `trial`; when its pruner says prune,
    stop the fit at the end of the epoch as early stopping would (the run still tests its best
    checkpoint and writes results.json), and remember the epoch in `pruned_at`."""

    def __init__(self, trial, monitor: str) -> None:
        self.trial = trial
        self.monitor = monitor
        self.validations = 0
        self.pruned_at: int | None = None

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking or self.pruned_at is not None:
            return
        value = trainer.callback_metrics.get(self.monitor)
        if value is None:
            return
        self.validations += 1
        self.trial.report(float(value), step=self.validations)
        if self.trial.should_prune():
            self.pruned_at = trainer.current_epoch + 1
            trainer.should_stop = True
            log.info("trial %d pruned after epoch %d: %s %.4f is worse than the earlier trials' median there",
                     self.trial.number, self.pruned_at, self.monitor, float(value))
