"""Before any training: the run directory can be written and has room for the run's checkpoints.

`check_writable` runs where the run directory is made or reopened (`training.rundir`); `PreflightCheck`
runs at the start of every fit (`on_fit_start`, before the first step), when the model and optimizer are
known: best.ckpt, last.ckpt and the next checkpoint while it is written (`COPIES_AT_PEAK`), each about the
weights and buffers plus the optimizer state of the trainable parameters. Either fails with one line
naming the folder, the space free there and what is needed.
"""

from __future__ import annotations

import errno
import logging
from pathlib import Path

import pytorch_lightning as pl
import torch

from transferkit.runtime.disk import DiskFullError, check_writable, file_size_limit, free_bytes, human_bytes

log = logging.getLogger(__name__)

# Optimizer state tensors per trainable parameter (Adam: exp_avg, exp_avg_sq; SGD: momentum_buffer).
STATE_SLOTS = {"adamw": 2, "adam": 2, "sgd": 1, "rmsprop": 2}
# best.ckpt and last.ckpt, and a third copy while one of them is rewritten (the atomic write's temporary file)
COPIES_AT_PEAK = 3
KEPT = ("best.ckpt", "last.ckpt")


def optimizer_slots(optimizers) -> int:
    """State tensors per trainable parameter of the run's (first) optimizer; 2 when unknown."""
    names = [type(opt).__name__.lower() for opt in optimizers or ()]
    return max((STATE_SLOTS.get(name, 2) for name in names), default=0)


def estimate_checkpoint_bytes(module: torch.nn.Module, slots: int) -> int:
    """About the size of one checkpoint: every tensor of the state dict, plus `slots` tensors of optimizer
    state per trainable parameter."""
    weights = sum(t.nelement() * t.element_size() for t in module.state_dict().values() if torch.is_tensor(t))
    trainable = sum(p.nelement() * p.element_size() for p in module.parameters() if p.requires_grad)
    return int(weights + slots * trainable)


def check_room(folder: Path, checkpoint_bytes: int) -> None:
    """Raise `DiskFullError` unless `folder` has room for the run's checkpoints (`COPIES_AT_PEAK` of
    `checkpoint_bytes`, less what the ones a resumed run will overwrite take already), and the file-size
    limit (`ulimit -f`) allows one."""
    folder = Path(folder)
    limit = file_size_limit()
    if limit is not None and limit < checkpoint_bytes:
        raise DiskFullError(f"file-size limit too low for this run: a checkpoint needs about "
                            f"{human_bytes(checkpoint_bytes)}, but this process may write files of at most "
                            f"{human_bytes(limit)} (ulimit -f) in {folder}; raise the limit (ulimit -f unlimited) "
                            "before training.", errno.EFBIG)
    existing = sum((folder / name).stat().st_size for name in KEPT if (folder / name).is_file())
    needed, free = COPIES_AT_PEAK * checkpoint_bytes - existing, free_bytes(folder)
    if free < needed:
        raise DiskFullError(f"not enough disk space for this run: {folder} has {human_bytes(free)} "
                            f"free, and its checkpoints need about {human_bytes(needed)} more (best.ckpt, last.ckpt "
                            f"and one being written, {human_bytes(checkpoint_bytes)} each); free space there or "
                            "point run_dir= at a bigger disk.", errno.ENOSPC)


def preflight_run_dir(folder: Path, checkpoint_bytes: int) -> None:
    """Writable, with room for the run's checkpoints: both checks before training."""
    check_writable(folder)
    check_room(folder, checkpoint_bytes)


class PreflightCheck(pl.Callback):
    """Checks, before the first training step, that `dirpath` (the checkpoints' folder) is writable and has
    room for the checkpoints of this model and optimizer. Every rank checks (the same folder, the same
    answer), so no rank waits on one that stopped."""

    def __init__(self, dirpath: str | Path) -> None:
        self.dirpath = Path(dirpath)

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        size = estimate_checkpoint_bytes(pl_module, optimizer_slots(trainer.optimizers))
        preflight_run_dir(self.dirpath, size)
        log.debug("Preflight: %s has room for checkpoints of about %s.", self.dirpath, human_bytes(size))
