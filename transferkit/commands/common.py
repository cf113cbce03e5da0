"""Pieces every training command shares: train + test + results.json."""

from __future__ import annotations

import logging
import time
import warnings
from pathlib import Path

import pytorch_lightning as pl
from omegaconf import DictConfig

from transferkit.builders import build_datamodule, build_task, build_trainer, container
from transferkit.rundir import create_run_dir, write_config, write_json

log = logging.getLogger("transferkit")


def resolve_finetune(cfg: DictConfig, datamodule) -> tuple[dict, dict | None]:
    """The finetune settings to use; `strategy=auto` measures the data first (see `advise`)."""
    finetune = container(cfg.finetune)
    if finetune.get("strategy") != "auto":
        return finetune, None
    from transferkit.commands.advise import resolve_auto_finetune

    return resolve_auto_finetune(cfg, datamodule)


def choose_cache(cfg: DictConfig, finetune: dict) -> tuple[bool, dict]:
    """Whether to train the head on cached backbone features (finetune.cache_features), and why."""
    from transferkit.data.feature_cache import cache_blockers, choose_feature_cache

    model, augment = container(cfg.model), container(cfg.augment)
    blockers = cache_blockers(cfg.task.kind, finetune.get("strategy"), finetune.get("unfreeze_at_epoch"),
                              augment.get("name"), augment.get("mixup_alpha", 0.0),
                              augment.get("cutmix_alpha", 0.0), model.get("drop_rate", 0.0),
                              model.get("drop_path_rate", 0.0))
    requested = finetune.get("cache_features")
    wasteful = "trainer.fast_dev_run reads only a batch or two" if cfg.trainer.get("fast_dev_run") else None
    use = choose_feature_cache(requested, blockers, wasteful)
    why = blockers or ([wasteful] if wasteful and requested is None else [])
    if not use:
        log.info("Feature cache off (finetune.cache_features=%r)%s", requested,
                 ": " + "; ".join(why) if why else "")
    return use, {"used": use, "requested": requested, "reasons": why}


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
    datamodule = build_datamodule(cfg)
    datamodule.scan()
    finetune, advice = resolve_finetune(cfg, datamodule)
    use_cache, cache_report = choose_cache(cfg, finetune)
    task = build_task(cfg, datamodule, finetune)
    run_dir = create_run_dir(cfg.run_dir)
    trainer = build_trainer(cfg, run_dir, task.monitor, task.monitor_mode)
    fit_data = wrap_feature_cache(cfg, datamodule, task, run_dir) if use_cache else datamodule
    if trainer.is_global_zero:
        log.info("Run directory: %s", run_dir)
        write_config(cfg, run_dir)
        write_json(datamodule.split_record, run_dir / "splits.json")
    with warnings.catch_warnings():
        # Frozen BatchNorm layers are in eval mode on purpose (see finetune.keep_frozen_norms_eval),
        # and the CSV logger shares the run directory with config.yaml by design.
        warnings.filterwarnings("ignore", message=".*module\\(s\\) in eval mode.*")
        warnings.filterwarnings("ignore", message="Experiment logs directory .* exists and is not empty")
        trainer.fit(task, datamodule=fit_data, ckpt_path=cfg.ckpt_path)
        val_metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("val/")}
        best = trainer.checkpoint_callback.best_model_path if trainer.checkpoint_callback else ""
        tested = trainer.test(task, datamodule=fit_data, ckpt_path=best or None, verbose=False)
    results = collect_results(cfg, command, task, datamodule, trainer, val_metrics, tested, run_dir, start)
    results["finetune"] = finetune
    results["feature_cache"] = {**cache_report, **(fit_data.report() if use_cache else {})}
    if use_cache:
        fit_data.store.release()
    if advice is not None:
        results["advice"] = advice
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
