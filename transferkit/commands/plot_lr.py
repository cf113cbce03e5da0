"""`python -m transferkit plot-lr recipe=...`: the LR of every param group over the whole run.

Builds the task exactly as `fit` would (strategy, param groups, optimizer, scheduler, warm-up
shortening) without training, steps the schedule through `max_epochs x steps_per_epoch`
optimizer steps, and writes `lr_schedule.png` and `lr_schedule.csv` into the run directory.
"""

from __future__ import annotations

import csv
import logging
import math
from pathlib import Path

from omegaconf import DictConfig

from transferkit.training.builders import build_datamodule, build_task, container
from transferkit.data.loader_settings import drops_last
from transferkit.tasks.finetune import build_param_groups
from transferkit.planning.plan import plan_model, plan_training
from transferkit.tasks.optim import build_optimizer
from transferkit.training.rundir import create_run_dir, write_config
from transferkit.tasks.schedulers import lr_curve

log = logging.getLogger("transferkit")


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


def plot_curves(curves: list[list[float]], names: list[str], steps: int, path: Path, title: str) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    epochs = [i / steps for i in range(len(curves[0]))]
    for curve, name in zip(curves, names):
        ax.plot(epochs, curve, label=name, linestyle="--" if name.endswith("_no_decay") else "-")
    ax.set_xlabel("epoch")
    ax.set_ylabel("learning rate")
    ax.set_title(title)
    ax.legend(fontsize="small", ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def write_csv(curves: list[list[float]], names: list[str], steps: int, path: Path) -> Path:
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["step", "epoch", *names])
        for i, row in enumerate(zip(*curves)):
            writer.writerow([i, f"{i / steps:.4f}", *(f"{lr:.6g}" for lr in row)])
    return path


def run(cfg: DictConfig) -> dict:
    from transferkit.tasks.base import fit_warmup

    plan = plan_model(cfg, load_weights=cfg.finetune.strategy == "auto")  # auto measures with them
    datamodule = build_datamodule(plan.cfg)
    datamodule.scan()
    cfg = plan_training(plan, datamodule).cfg
    task = build_task(cfg, datamodule)  # random init: the schedule does not depend on the weights
    optimizer_cfg = container(cfg.optimizer)
    groups = build_param_groups(task.encoder, task.head, task.plan, weight_decay=optimizer_cfg.get("weight_decay", 0.0))
    optimizer = build_optimizer(groups, **optimizer_cfg)
    trainer = container(cfg.trainer)
    max_epochs = int(trainer.get("max_epochs") or 1)
    train_size, batch_size = datamodule.sizes()["train"], int(cfg.data.batch_size)
    drop_last = drops_last(cfg.data.get("drop_last", "auto"), train_size, batch_size, None)
    steps = steps_per_epoch(train_size, batch_size, trainer, drop_last)
    schedule = fit_warmup(container(cfg.scheduler), max_epochs)
    curves = lr_curve(schedule, optimizer, max_epochs, steps)
    names = [g.get("name", f"group{i}") for i, g in enumerate(optimizer.param_groups)]
    run_dir = create_run_dir(cfg.run_dir)
    write_config(cfg, run_dir)
    title = f"{schedule.get('name')} / {optimizer_cfg.get('name')} / {task.plan.strategy}"
    png = plot_curves(curves, names, steps, run_dir / "lr_schedule.png", title)
    table = write_csv(curves, names, steps, run_dir / "lr_schedule.csv")
    log.info("LR schedule (%d epochs x %d steps, %d param groups): %s", max_epochs, steps, len(names), png)
    return {"png": str(png), "csv": str(table), "run_dir": str(run_dir), "max_epochs": max_epochs,
            "steps_per_epoch": steps, "groups": names, "lr_first": [c[0] for c in curves],
            "lr_max": [max(c) for c in curves], "lr_last": [c[-1] for c in curves]}
