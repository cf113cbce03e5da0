"""`python -m transferkit plot-lr recipe=...`: the LR of every param group over the whole run.

Builds the task exactly as `fit` would (strategy, param groups, optimizer, scheduler, warm-up
shortening) without training, steps the schedule through `max_epochs x steps_per_epoch`
optimizer steps (`transferkit.evaluation.lr_schedule`), and writes `lr_schedule.png` and
`lr_schedule.csv` into the run directory.
"""

from __future__ import annotations

import logging

from omegaconf import DictConfig

from transferkit.evaluation.lr_schedule import lr_schedule
from transferkit.evaluation.reports.lr_plot import plot_lr_schedule, write_lr_schedule_csv
from transferkit.planning.plan import plan_spec, plan_training
from transferkit.training.builders import build_datamodule, build_task
from transferkit.training.rundir import create_run_dir, write_config

log = logging.getLogger("transferkit")


def run(cfg: DictConfig) -> dict:
    spec = plan_spec(cfg, "plot-lr", load_weights=cfg.finetune.strategy == "auto")  # auto measures with them
    datamodule = build_datamodule(spec.data, spec.model.input.in_chans)
    datamodule.scan()
    spec = plan_training(spec, datamodule)
    task = build_task(spec, datamodule)  # random init: the schedule does not depend on the weights
    schedule = lr_schedule(task, spec, datamodule.sizes()["train"])
    run_dir = create_run_dir(spec.outputs.run_dir)
    write_config(spec.config, run_dir)
    png = plot_lr_schedule(schedule, run_dir / "lr_schedule.png")
    table = write_lr_schedule_csv(schedule, run_dir / "lr_schedule.csv")
    curves, names = schedule.curves, schedule.names
    log.info("LR schedule (%d epochs x %d steps, %d param groups): %s", schedule.max_epochs,
             schedule.steps_per_epoch, len(names), png)
    return {"png": str(png), "csv": str(table), "run_dir": str(run_dir), "max_epochs": schedule.max_epochs,
            "steps_per_epoch": schedule.steps_per_epoch, "groups": names, "lr_first": [c[0] for c in curves],
            "lr_max": [max(c) for c in curves], "lr_last": [c[-1] for c in curves]}
