"""The LR range test (Lightning's `Tuner.lr_find`) on a planned run, keeping the param groups' multipliers.

Lightning's finder sets every param group to the same LR and sweeps it from `min_lr` to `max_lr`.
transferkit's groups differ by design (`lr_scale`: `backbone_lr_scale`, `layer_decay`), so while the
finder runs each group steps at the swept LR x its `lr_scale`: the sweep is over the base LR (the head
group's), and the suggestion becomes `optimizer.lr`, from which `build_optimizer` derives every group.
"""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path

import pytorch_lightning as pl
from pytorch_lightning.tuner import Tuner
from torch.optim.optimizer import register_optimizer_step_post_hook, register_optimizer_step_pre_hook

from transferkit.errors import ConfigError
from transferkit.evaluation.reports.lr_plot import LRSearch
from transferkit.planning.spec import RunSpec
from transferkit.tasks.finetune import FinetunePlan
from transferkit.training.builders import build_task
from transferkit.training.console import LIGHTNING_INFO_LOGGERS

log = logging.getLogger("transferkit")

FIND = "find"
TRAINER_KEYS = ("accelerator", "precision", "accumulate_grad_batches", "gradient_clip_val",
                "gradient_clip_algorithm", "deterministic", "benchmark", "limit_train_batches")


def wants_search(optimizer: dict) -> bool:
    """`optimizer.lr=find`: run the range test before fit and train with its suggestion."""
    return str(optimizer.get("lr")) == FIND


def solved_head(finetune: dict) -> bool:
    return FinetunePlan(**finetune).solves_head


def check_searchable(spec: RunSpec, command: str) -> None:
    """Refuse, in one line, a run whose training the found LR would not drive."""
    key = "optimizer.lr=find" if command == "fit" else "lr-find"
    strategy = spec.finetune.options.get("strategy")
    if strategy == "auto":
        raise ConfigError(f"{key}: finetune=auto races several strategies, each with its own LR groups; "
                          "choose finetune=freeze|partial|full for the search.")
    if command == "fit" and solved_head(spec.finetune.options):
        raise ConfigError("optimizer.lr=find: finetune=freeze with finetune.head_solver=lbfgs solves the head "
                          "without any LR, so nothing would train with the found LR; drop optimizer.lr=find, "
                          "or add finetune.head_solver=sgd to train the head by SGD.")
    trainer = spec.trainer
    devices = trainer.get("devices")
    several = (isinstance(devices, int) and devices > 1 or isinstance(devices, (list, tuple)) and len(devices) > 1
               or int(trainer.get("num_nodes") or 1) > 1 or "ddp" in str(trainer.get("strategy")))
    if command == "fit" and several:
        raise ConfigError("optimizer.lr=find searches in this process before training; with several processes "
                          "each would search again. Run `python -m transferkit lr-find ...` first, then fit with "
                          "optimizer.lr=<its suggestion>.")
    if trainer.get("fast_dev_run"):
        raise ConfigError(f"{key}: trainer.fast_dev_run skips Lightning's LR finder; drop it for the search.")


@contextmanager
def group_lr_scales_kept() -> Iterator[None]:
    """While the finder sweeps one LR over every group, step each group at that LR x its `lr_scale`."""

    def scale(optimizer, args, kwargs) -> None:
        for group in optimizer.param_groups:
            group["lr"] *= group.get("lr_scale", 1.0)

    def unscale(optimizer, args, kwargs) -> None:
        for group in optimizer.param_groups:
            if group.get("lr_scale", 1.0):
                group["lr"] /= group.get("lr_scale", 1.0)

    handles = (register_optimizer_step_pre_hook(scale), register_optimizer_step_post_hook(unscale))
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


@contextmanager
def lightning_quiet() -> Iterator[None]:
    """The finder's save/restore of its temporary checkpoint is no news to a user."""
    loggers = [logging.getLogger(name) for name in LIGHTNING_INFO_LOGGERS]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.WARNING)
    try:
        yield
    finally:
        for logger, level in zip(loggers, levels):
            logger.setLevel(level)


def search_trainer(spec: RunSpec, root: Path) -> pl.Trainer:
    """A bare one-device Trainer for the sweep: the run's numeric flags, no logs, checkpoints or validation."""
    flags = {k: v for k, v in spec.trainer.flags.items() if k in TRAINER_KEYS and v is not None}
    epochs = int(spec.lr_find["num_training"])  # at least one step an epoch: room for the sweep
    return pl.Trainer(**flags, devices=1, max_epochs=epochs, logger=False, enable_checkpointing=False,
                      enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
                      check_val_every_n_epoch=10**9, default_root_dir=str(root))


def find_lr(spec: RunSpec, datamodule) -> LRSearch:
    """Run `Tuner.lr_find` on the task the spec builds (its weights, strategy, param groups)."""
    settings = dict(spec.lr_find)
    # the finder starts every group at min_lr whatever optimizer.lr says (it may say `find`)
    start = replace(spec, optimizer={**spec.optimizer, "lr": float(settings["min_lr"])})
    task = build_task(start, datamodule, spec.model.weights)
    with tempfile.TemporaryDirectory(prefix="transferkit-lr-find-") as root, group_lr_scales_kept(), \
            lightning_quiet():
        finder = Tuner(search_trainer(spec, Path(root))).lr_find(task, datamodule=datamodule, update_attr=False,
                                                              **settings)
    if finder is None:
        raise ConfigError("lr-find: Lightning's LR finder did not run (trainer.fast_dev_run?).")
    suggestion = finder.suggestion()
    lrs, losses = [float(v) for v in finder.results["lr"]], [float(v) for v in finder.results["loss"]]
    if suggestion is None:
        raise ConfigError(f"lr-find: the sweep recorded only {len(lrs)} usable steps, too few to suggest an LR; "
                          "raise lr_find.num_training (and check the loss is finite).")
    log.info("LR search: %d steps from %.2g to %.2g; suggested base LR %.3g", len(lrs), lrs[0], lrs[-1], suggestion)
    return LRSearch(lrs, losses, float(suggestion), settings)
