"""Pieces every training command shares: train + test + results.json."""

from __future__ import annotations

import logging
import time
from pathlib import Path

import pytorch_lightning as pl
from omegaconf import DictConfig

from transferkit.builders import build_datamodule, build_task, build_trainer, container
from transferkit.planning import Plan, plan_model, plan_training
from transferkit.rundir import create_run_dir, write_config, write_json
from transferkit.tasks.linear_probe import probe_report

log = logging.getLogger("transferkit")


def plan_run(cfg: DictConfig) -> tuple[Plan, object]:
    """Plan the run (model, weights, input format, fine-tuning, cache) and scan its data."""
    plan = plan_model(cfg)
    datamodule = build_datamodule(plan.cfg)
    datamodule.scan()
    return plan_training(plan, datamodule), datamodule


def wrap_feature_cache(cfg: DictConfig, datamodule, task, run_dir: Path):
    """Serve the frozen backbone's features once per split instead of images (see feature_cache)."""
    from transferkit.data.feature_cache import FeatureCacheDataModule
    from transferkit.data.feature_store import FeatureStore

    cache_dir = cfg.data.get("cache_dir")
    store = FeatureStore(cache_dir=Path(cache_dir) / "features" if cache_dir else None,
                         spill_dir=run_dir / "feature_cache")
    return FeatureCacheDataModule(datamodule, task.encoder, str(cfg.model.backbone),
                                  image_size=int(cfg.data.image_size), in_chans=int(cfg.model.in_chans),
                                  store=store)


def train_and_test(cfg: DictConfig, command: str) -> tuple[dict, pl.Trainer, object, object, Path]:
    """Fit the configured task, evaluate the best checkpoint, write results.json."""
    start = time.time()
    pl.seed_everything(cfg.seed, workers=True, verbose=False)
    plan, datamodule = plan_run(cfg)
    cfg, use_cache = plan.cfg, plan.cache["used"]
    task = build_task(cfg, datamodule, plan.weights)
    run_dir = create_run_dir(cfg.run_dir)
    trainer = build_trainer(cfg, run_dir, task.monitor, task.monitor_mode)
    fit_data = wrap_feature_cache(cfg, datamodule, task, run_dir) if use_cache else datamodule
    if trainer.is_global_zero:
        log.info("Run directory: %s", run_dir)
        write_config(cfg, run_dir)
        write_json(datamodule.split_record, run_dir / "splits.json")
    trainer.fit(task, datamodule=fit_data, ckpt_path=cfg.ckpt_path)  # console.quiet_console filters the noise
    val_metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("val/")}
    best = trainer.checkpoint_callback.best_model_path if trainer.checkpoint_callback else ""
    tested = trainer.test(task, datamodule=fit_data, ckpt_path=best or None, verbose=False)
    results = collect_results(cfg, command, task, datamodule, trainer, val_metrics, tested, run_dir, start)
    results["finetune"] = container(cfg.finetune)
    results["plan"] = plan.to_dict()
    results["feature_cache"] = {**plan.cache, **(fit_data.report() if use_cache else {})}
    results["linear_probe"] = probe_report(trainer)  # finetune.head_solver=lbfgs / finetune.lpft (or None)
    if use_cache:
        fit_data.store.release()
    if plan.advice is not None:
        results["advice"] = plan.advice
    if trainer.is_global_zero:
        write_json(results, run_dir / "results.json")
        log.info("%s", metrics_table(results["metrics"]))
        log.info("Results: %s", run_dir / "results.json")
    return results, trainer, task, datamodule, run_dir


def collect_results(cfg, command, task, datamodule, trainer, val_metrics, tested, run_dir, start) -> dict:
    metrics = dict(val_metrics)
    callback = trainer.checkpoint_callback
    if callback is not None and callback.best_model_score is not None:
        metrics[f"best/{callback.monitor}"] = float(callback.best_model_score)
    for row in tested or []:
        metrics.update({k: float(v) for k, v in row.items()})
    sizes = datamodule.sizes()
    return {
        "command": command,
        "task": cfg.task.kind,
        "recipe": cfg.get("recipe"),
        "strategy": task.plan.strategy,
        "backbone": cfg.model.backbone,
        "weights": str(cfg.model.weights),
        "data": {"root": cfg.data.root, "embedded": None if cfg.data.root else cfg.data.get("embedded"),
                 "num_classes": len(datamodule.class_names), "class_names": list(datamodule.class_names),
                 "train_size": sizes.get("train", 0), "val_size": sizes.get("val", 0),
                 "test_size": sizes.get("test", 0),
                 "skipped_files": [[str(p), r] for p, r in getattr(datamodule, "skipped", [])]},
        "params": task.num_params(),
        "metrics": metrics,
        "best_checkpoint": callback.best_model_path if callback else None,
        "last_checkpoint": str(run_dir / "checkpoints" / "last.ckpt") if callback else None,
        "epochs": trainer.current_epoch,
        "wall_seconds": round(time.time() - start, 2),
        "run_dir": str(run_dir),
    }


def metrics_table(metrics: dict[str, float]) -> str:
    width = max((len(k) for k in metrics), default=6)
    lines = [f"{'metric':<{width}}  value", f"{'-' * width}  ------"]
    lines += [f"{k:<{width}}  {v:.4f}" for k, v in sorted(metrics.items())]
    return "\n".join(lines)
