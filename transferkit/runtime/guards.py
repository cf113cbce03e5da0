"""How a fit stops early without losing the run: signals, and a loss that is no longer finite.

SIGTERM: Lightning's own handler sets a flag that its loops check after every step, then raises
`SIGTERMException` (a `SystemExit`) through `on_exception`. SIGINT (Ctrl+C) is forwarded to that
same handler, so both signals stop at the next step boundary; `SignalCheckpoint.on_exception` then
saves `last.ckpt` and sets the exit status (128 + signal number). A second Ctrl+C stops at once.

A NaN or infinite training loss stops the run before that step's backward pass (`FiniteLossGuard`):
no checkpoint is written from the diverged model, so `best.ckpt` and `last.ckpt` stay good.
"""

from __future__ import annotations

import logging
import math
import signal
import threading
from collections import deque
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from pytorch_lightning.trainer.states import TrainerFn
from pytorch_lightning.utilities.exceptions import SIGTERMException

from transferkit.runtime.checkpoint_io import epochs_done, wait_for_checkpoint_writes
from transferkit.runtime.host_collectives import HostGroup
from transferkit.runtime.stops import RunStopped  # also transferkit.RunStopped (via this module)

log = logging.getLogger(__name__)

EXIT_DIVERGED = 3
EXIT_SIGNAL = {signal.SIGINT: 130, signal.SIGTERM: 143}  # 128 + signal number, as a shell reports it
SIGNAL_OF_EXIT = {code: sig for sig, code in EXIT_SIGNAL.items()}


class RunInterrupted(RunStopped):
    """Ctrl+C, SIGTERM, or (from Python) a KeyboardInterrupt or SystemExit stopped the run; the message says
    how to resume it where a checkpoint was saved.

    Example:
        >>> import transferkit
        >>> try:
        ...     run = transferkit.fit(trainer={"max_epochs": 50})  # doctest: +SKIP
        ... except transferkit.RunInterrupted as stop:  # the notebook's stop button
        ...     print(stop)  # ...; resume it with: python -m transferkit fit resume=outputs/...
    """

    status = "interrupted"

    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(message)
        self.exit_code = exit_code


class RunDiverged(RunStopped):
    """The training loss became NaN or infinite; `record` holds the step, epoch, LR and last good checkpoint.

    Example:
        >>> import transferkit
        >>> try:
        ...     run = transferkit.fit(finetune="full", optimizer={"lr": 1e6})  # doctest: +SKIP
        ... except transferkit.RunDiverged as stop:
        ...     print(stop.record["step"], stop.record["last_good_checkpoint"])
    """

    status = "diverged"
    exit_code = EXIT_DIVERGED

    def __init__(self, message: str, record: dict) -> None:
        super().__init__(message)
        self.record = record


def signal_name(exit_code: int) -> str:
    sig = SIGNAL_OF_EXIT.get(exit_code)
    return sig.name if sig is not None else f"exit {exit_code}"


class SignalCheckpoint(pl.Callback):
    """Saves `<dirpath>/last.ckpt` when a signal stops the fit, and marks the exit status on the
    `SIGTERMException` Lightning raises (its `code`: 143 for SIGTERM, 130 for SIGINT).

    Like Lightning's `OnExceptionCheckpoint`, but only for signals (a crash mid-step leaves no
    consistent state to save), and without its side effect of making every later `fit()` of the
    trainer resume from that file."""

    def __init__(self, dirpath: str | Path) -> None:
        self.ckpt_path = str(Path(dirpath) / "last.ckpt")
        self.received: signal.Signals | None = None
        self.previous_sigint: Any = None
        self.pending = False  # DDP: a signal reached this rank; all ranks stop after the same step
        self.host = HostGroup()  # DDP: where the ranks agree on it (a host-side gloo group)

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # DDP: whether a signal reached some rank is agreed between two steps (on_train_batch_end)
        # over a CPU (gloo) group that every rank opens here (transferkit.runtime.host_collectives).
        self.host.open(trainer.world_size)
        # Lightning installed its SIGTERM handler just before training; it restores every handler
        # (these too) when the fit ends.
        if threading.current_thread() is not threading.main_thread():
            return
        self.previous_sigint = signal.signal(signal.SIGINT, self.forward_sigint)
        if trainer.world_size > 1:
            # Lightning's handler runs a collective (a broadcast) inside the signal handler, at whatever
            # point each rank happens to be: under DDP that deadlocks the ranks. Note the signal here,
            # let the ranks agree on it between two steps, then let Lightning stop every rank.
            signal.signal(signal.SIGTERM, self.note_signal)

    def note_signal(self, signum: int, frame: Any) -> None:
        self.pending = True
        log.warning("%s: stopping every rank after this step and saving %s.", signal.Signals(signum).name,
                    self.ckpt_path)

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        if trainer.world_size <= 1 or trainer.received_sigterm or not self.host.active:
            return
        if self.host.any_rank(self.pending):  # a signal reached some rank
            # Lightning's loops raise SIGTERMException on every rank at this step's end.
            trainer._signal_connector.received_sigterm = True

    def forward_sigint(self, signum: int, frame: Any) -> None:
        handler = signal.getsignal(signal.SIGTERM)
        if self.received is not None or not callable(handler):
            self.restore_sigint()
            raise KeyboardInterrupt  # the second Ctrl+C: stop now, without a checkpoint
        self.received = signal.SIGINT
        log.warning("Ctrl+C: stopping after this step and saving %s (press Ctrl+C again to stop at once).",
                    self.ckpt_path)
        handler(signum, frame)  # Lightning's SIGTERM handler: the loops stop at the next step boundary

    def restore_sigint(self) -> None:
        if self.previous_sigint is not None and threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGINT, self.previous_sigint)
        self.previous_sigint = None

    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        self.restore_sigint()
        if not isinstance(exception, SIGTERMException) or trainer.state.fn != TrainerFn.FITTING:
            return
        received = self.received or signal.SIGTERM
        exception.code = EXIT_SIGNAL[received]
        trainer.save_checkpoint(self.ckpt_path, weights_only=False)
        log.info("%s: saved %s at step %d.", received.name, self.ckpt_path, trainer.global_step)

    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self.restore_sigint()
        self.host.close()


def current_lrs(trainer: pl.Trainer) -> list[float]:
    return sorted({float(group["lr"]) for opt in trainer.optimizers for group in opt.param_groups}, reverse=True)


class FiniteLossGuard(pl.Callback):
    """Stops the fit at the first non-finite training loss, naming the step, the LR and the last
    good checkpoint (`<dirpath>/last.ckpt` from an earlier epoch end, if any).

    On the CPU each step's loss is checked before its backward pass. On a GPU, reading the loss
    would stall the queue of kernels every step (a host sync), and even waiting for the previous
    step's flag keeps the host from running ahead of the device. So each step's flag is copied into
    a ring of pinned host memory without blocking; flags are read once their copies have landed
    (polled, never waited for, between steps) and, waiting if need be, at the end of every epoch and
    before any checkpoint is written: no checkpoint ever holds a diverged model.
    """

    RING = 64  # flags in flight at most; a host that many steps ahead waits for the oldest

    def __init__(self, dirpath: str | Path) -> None:
        self.last = Path(dirpath) / "last.ckpt"
        self.good_epochs: int | None = None  # epochs done in the last checkpoint saved or loaded
        # GPU: (flag, event, loss, (step, epoch, lrs)) of the steps whose flag was not read yet, oldest first
        self.pending: deque = deque()
        self._flags: torch.Tensor | None = None  # the pinned ring
        self._slot = 0

    def on_load_checkpoint(self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict) -> None:
        self.good_epochs = epochs_done(checkpoint)

    def on_save_checkpoint(self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict) -> None:
        self.check_pending(trainer, wait=True)  # raises (and nothing is written) if a step diverged
        self.good_epochs = epochs_done(checkpoint)

    def on_before_backward(self, trainer: pl.Trainer, pl_module: pl.LightningModule, loss: torch.Tensor) -> None:
        finite = torch.isfinite(loss.detach()).all()
        where = (trainer.global_step + 1, trainer.current_epoch + 1, current_lrs(trainer))
        if loss.device.type != "cuda":
            if not bool(finite):
                self.diverged(trainer, loss.detach(), *where, late=False)
            return
        self.check_pending(trainer, wait=False)
        if len(self.pending) >= self.RING:  # the oldest flag's slot is about to be reused
            self.check_one(trainer, self.pending.popleft(), wait=True)
        if self._flags is None:
            self._flags = torch.zeros(self.RING, dtype=torch.bool, pin_memory=True)
        flag = self._flags[self._slot]
        self._slot = (self._slot + 1) % self.RING
        flag.copy_(finite, non_blocking=True)
        event = torch.cuda.Event()
        event.record()
        self.pending.append((flag, event, loss.detach(), where))

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        self.check_pending(trainer, wait=bool(getattr(trainer, "is_last_batch", False)))

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.check_pending(trainer, wait=True)

    def check_pending(self, trainer: pl.Trainer, wait: bool) -> None:
        """Read the flags whose copies have landed (all of them, waiting, with `wait`), oldest first."""
        pending = getattr(self, "pending", None)
        while pending and (wait or pending[0][1].query()):
            self.check_one(trainer, pending.popleft(), wait=True)

    def check_one(self, trainer: pl.Trainer, entry: tuple, wait: bool) -> None:
        flag, event, loss, where = entry
        if wait:
            event.synchronize()
        if not bool(flag):
            self.pending.clear()
            self.diverged(trainer, loss, *where, late=True)

    def diverged(self, trainer: pl.Trainer, loss: torch.Tensor, step: int, epoch: int, lrs: list[float],
                 late: bool) -> None:
        value = float(loss.float().mean())
        wait_for_checkpoint_writes(trainer)  # last.ckpt of the previous epoch may still be being written
        good = str(self.last) if self.last.is_file() else None
        where = (f"the last good checkpoint is {good} (after epoch {self.good_epochs})" if good and self.good_epochs
                 else f"the last good checkpoint is {good}" if good else "no checkpoint had been saved yet")
        lr_text = ", ".join(f"{lr:.3g}" for lr in lrs)
        stopped = "stopped before the next checkpoint" if late else "stopped before that step"
        message = (f"training loss is {'nan' if math.isnan(value) else value} at step {step} (epoch {epoch}) "
                   f"with lr {lr_text}; {stopped}, {where}, best.ckpt untouched. "
                   f"Lower optimizer.lr (or set trainer.gradient_clip_val) and start a new run.")
        record = {"step": step, "epoch": epoch, "lr": lrs, "loss": str(value), "last_good_checkpoint": good}
        raise RunDiverged(message, record)
