"""`python -m transferkit test ckpt_path=...`: evaluate a checkpoint on the test split."""

from __future__ import annotations

import logging
import time

import pytorch_lightning as pl
from omegaconf import DictConfig

from transferkit.builders import build_datamodule, build_trainer
from transferkit.commands.common import metrics_table
from transferkit.loading import load_task, require
from transferkit.planning import plan_for_checkpoint
from transferkit.reports.run_report import finish_run_report
from transferkit.rundir import create_run_dir, write_config, write_json

log = logging.getLogger("transferkit")


def run(cfg: DictConfig) -> dict:
    start = time.time()
    ckpt = require(cfg.ckpt_path, "ckpt_path", "a checkpoint written by fit, e.g. outputs/<date>/<time>/checkpoints/best.ckpt")
    pl.seed_everything(cfg.seed, workers=True, verbose=False)
    task = load_task(ckpt)
    cfg = plan_for_checkpoint(cfg, dict(task.hparams))
    datamodule = build_datamodule(cfg)
    datamodule.scan()
    if list(datamodule.class_names) != list(task.class_names):
        raise ValueError(
            f"data.root={cfg.data.root!r} has classes {datamodule.class_names} but the checkpoint "
            f"{str(ckpt)!r} was trained on {task.class_names}; point data.root at matching data."
        )
    run_dir = create_run_dir(cfg.run_dir)
    trainer = build_trainer(cfg, run_dir, task.monitor, task.monitor_mode)
    if trainer.is_global_zero:
        log.info("Run directory: %s", run_dir)
        write_config(cfg, run_dir)
    tested = trainer.test(task, datamodule=datamodule, verbose=False)
    metrics = {k: float(v) for row in tested for k, v in row.items()}
    results = {"command": "test", "task": cfg.task.kind, "checkpoint": str(ckpt),
               "data": {"root": cfg.data.root, "test_size": datamodule.sizes().get("test", 0)},
               "metrics": metrics, "wall_seconds": round(time.time() - start, 2), "run_dir": str(run_dir)}
    if trainer.is_global_zero:
        write_json(results, run_dir / "results.json")
        log.info("%s", metrics_table(metrics))
        finish_run_report(cfg, trainer, datamodule, run_dir, results)
    return results
