"""`python -m transferkit test ckpt_path=... [tta=flip|multiscale]`: evaluate on the test split.

`ckpt_path` may name several checkpoints (`ckpt_path=[a,b,c]`) or a run directory (a cv run: its
folds): their softmax outputs (segmentation: per-pixel probabilities) are averaged, each member
preparing images its own way.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import pytorch_lightning as pl
from omegaconf import DictConfig
from torch.utils.data import DataLoader

from transferkit.training.builders import build_datamodule, build_trainer
from transferkit.training.session import metrics_table, num_nodes
from transferkit.tasks.loading import checkpoint_paths, is_many, load_ensemble, load_task
from transferkit.planning.plan import plan_for_checkpoint
from transferkit.evaluation.reports.run_report import finish_run_report
from transferkit.training.rundir import create_run_dir, write_config, write_json
from transferkit.inference.tta import check_tta

log = logging.getLogger("transferkit")


def run(cfg: DictConfig) -> dict:
    start = time.time()
    tta = check_tta(cfg.get("tta"))
    paths = checkpoint_paths(cfg.ckpt_path)
    single = len(paths) == 1 and tta == "none"
    pl.seed_everything(cfg.seed, workers=True, verbose=False)
    model = load_task(paths[0]) if single else load_ensemble(paths, tta)[0]
    first = model if single else model.members[0]
    cfg = plan_for_checkpoint(cfg, dict(first.hparams))
    datamodule = build_datamodule(cfg)
    datamodule.scan()
    if list(datamodule.class_names) != list(model.class_names):
        raise ValueError(
            f"data.root={cfg.data.root!r} has classes {datamodule.class_names} but the checkpoint "
            f"{str(paths[0])!r} was trained on {model.class_names}; point data.root at matching data."
        )
    run_dir = create_run_dir(cfg.run_dir, num_nodes(cfg))
    trainer = build_trainer(cfg, run_dir, first.monitor, first.monitor_mode)
    if trainer.is_global_zero:
        log.info("Run directory: %s", run_dir)
        write_config(cfg, run_dir)
    if single:
        tested = trainer.test(model, datamodule=datamodule, verbose=False)
    else:
        tested = trainer.test(model, dataloaders=views_loader(model, datamodule, cfg), verbose=False)
    metrics = {k: float(v) for row in tested for k, v in row.items()}
    checkpoint = str(paths[0]) if len(paths) == 1 and not is_many(cfg.ckpt_path) else [str(p) for p in paths]
    results = {"command": "test", "task": cfg.task.kind, "checkpoint": checkpoint, "tta": tta,
               "data": {"root": cfg.data.root, "test_size": datamodule.sizes().get("test", 0)},
               "metrics": metrics, "wall_seconds": round(time.time() - start, 2), "run_dir": str(run_dir)}
    if trainer.is_global_zero:
        write_json(results, run_dir / "results.json")
        log.info("%s", metrics_table(metrics))
        finish_run_report(cfg, trainer, datamodule, run_dir, results)
    return results


def views_loader(ensemble, datamodule, cfg: DictConfig) -> DataLoader:
    """The test split (val when there is none, as `test_dataloader`) in each member's preprocessing."""
    from transferkit.inference.ensemble import member_inputs
    from transferkit.commands.predict import eval_workers
    from transferkit.data.sources import ViewsDataset

    split = "test" if len(datamodule.sources.get("test", ())) else "val"
    channels, transforms = member_inputs(ensemble)
    dataset = ViewsDataset(datamodule.sources[split], transforms, channels, with_mask=ensemble.segmentation)
    return DataLoader(dataset, batch_size=int(cfg.data.batch_size), shuffle=False,
                      num_workers=eval_workers(cfg.data.get("num_workers", 0)))


def test_ensemble(cfg: DictConfig, paths: list[Path], datamodule, run_dir: Path) -> dict:
    """Metrics of the ensemble of `paths` on `datamodule`'s test split (cv: the folds on the held-out test)."""
    ensemble, _ = load_ensemble(paths, check_tta(cfg.get("tta")))
    first = ensemble.members[0]
    trainer = build_trainer(cfg, run_dir, first.monitor, first.monitor_mode, log_version="ensemble")
    tested = trainer.test(ensemble, dataloaders=views_loader(ensemble, datamodule, cfg), verbose=False)
    return {k: float(v) for row in tested for k, v in row.items()}

