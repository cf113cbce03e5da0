"""`checkpoint.every_minutes=N` / `checkpoint.every_steps=K`: a mid-epoch checkpoint for long epochs, besides
the epoch-end `last.ckpt`.

Every N minutes of training (counted from the last checkpoint of any kind), or after every K-th optimizer step,
the fit saves `checkpoints/mid-epoch.ckpt` between two steps, through the same atomic `CheckpointIO` as every
other checkpoint. `fit resume=...` continues from it when it is newer (a later step) than `last.ckpt`.
Resuming mid-epoch from a folder is approximate: its loader cannot continue its pass, so the rest of that epoch
is drawn from a fresh shuffle (an epoch-end `last.ckpt` resumes exactly). A streamed, optimized data set
(`data/streaming/optimized.py`) saves its loader's state in the checkpoint and continues the pass exactly.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path

import pytorch_lightning as pl

from transferkit.runtime.checkpoint_io import checkpoint_meta, checkpoint_problem
from transferkit.errors import ConfigError
from transferkit.runtime.host_collectives import HostGroup

log = logging.getLogger(__name__)

MID_EPOCH = "mid-epoch.ckpt"


def check_every_steps(value) -> int | None:
    """`checkpoint.every_steps`: null or a whole number of optimizer steps >= 1."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"checkpoint.every_steps={value!r} is not a whole number of steps >= 1; use e.g. "
                          "checkpoint.every_steps=500, or null.")
    return value


def check_every_minutes(value) -> float | None:
    """`checkpoint.every_minutes`: null (epoch ends only) or a positive number of minutes."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        raise ConfigError(f"checkpoint.every_minutes={value!r} is not a positive number of minutes; use e.g. "
                          "checkpoint.every_minutes=30, or null to checkpoint at epoch ends only.")
    return float(value)


class IntervalCheckpoint(pl.Callback):
    """Saves `<dirpath>/mid-epoch.ckpt` after a training step once `every_minutes` have passed since
    the last checkpoint (epoch-end, signal or this one). `clock` returns seconds (tests inject one).

    Under DDP rank 0's clock decides and every rank saves together (`trainer.save_checkpoint` is
    collective). The last step of an epoch is skipped: the epoch-end `last.ckpt` follows it."""

    def __init__(self, dirpath: str | Path, every_minutes: float | None,
                 clock: Callable[[], float] = time.monotonic, every_steps: int | None = None) -> None:
        self.path = Path(dirpath) / MID_EPOCH
        minutes = check_every_minutes(every_minutes)
        self.seconds = float("inf") if minutes is None else minutes * 60.0
        self.every_steps = check_every_steps(every_steps)
        self.clock = clock
        self.since: float | None = None
        self.host = HostGroup()  # DDP: where rank 0's clock decides for every rank

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.since = self.clock()
        self.host.open(trainer.world_size)

    def on_save_checkpoint(self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict) -> None:
        self.since = self.clock()  # any checkpoint restarts the interval

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs, batch,
                           batch_idx: int) -> None:
        due = self.since is not None and self.clock() - self.since >= self.seconds
        due = due or (self.every_steps is not None and trainer.global_step % self.every_steps == 0)
        if trainer.world_size > 1 and self.host.active:
            due = self.host.rank_zero_says(due)
        if not due or trainer.fit_loop.epoch_loop.batch_progress.is_last_batch:
            return
        trainer.save_checkpoint(self.path, weights_only=False)
        log.info("Saved %s at step %d (checkpoint.every_minutes).", self.path, trainer.global_step)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.is_global_zero:  # the fit finished: last.ckpt is newer, the mid-epoch one is stale
            self.path.unlink(missing_ok=True)

    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self.host.close()


def newer_mid_epoch(run_dir: Path, last: Path) -> Path | None:
    """`<run_dir>/checkpoints/mid-epoch.ckpt` if it is whole and from a later step than `last`
    (`fit resume=` and a race leg continue from it then)."""
    mid = run_dir / "checkpoints" / MID_EPOCH
    if not mid.is_file() or checkpoint_problem(mid):
        return None
    if last.exists() and (checkpoint_problem(last) or
                          checkpoint_meta(last)["global_step"] >= checkpoint_meta(mid)["global_step"]):
        return None
    log.info("Resuming from the mid-epoch checkpoint %s (newer than last.ckpt); the rest of its epoch is "
             "drawn from a fresh shuffle.", mid)
    return mid
