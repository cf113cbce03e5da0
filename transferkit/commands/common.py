"""Pieces every training command shares: train + test + results.json."""

from __future__ import annotations

import logging
import time
from pathlib import Path

import pytorch_lightning as pl
from omegaconf import DictConfig
from pytorch_lightning.utilities import rank_zero_only

from transferkit.builders import build_datamodule, build_feature_cache, build_task, build_trainer
from transferkit.errors import ConfigError
from transferkit.loading import read_checkpoint, require
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


def train_and_test(cfg: DictConfig, command: str) -> tuple[dict, pl.Trainer, object, object, Path]:
    """Fit the configured task (or race the candidates of `finetune=auto`), evaluate the best
    checkpoint, write results.json."""
    start = time.time()
    if cfg.get("ckpt_path"):  # Lightning resumes from it later: refuse a file that would run code now
        read_checkpoint(require(cfg.ckpt_path, "ckpt_path", "a checkpoint to resume from"))
    pl.seed_everything(cfg.seed, workers=True, verbose=False)
    plan, datamodule = plan_run(cfg)
    cfg = plan.cfg
    run_dir = create_run_dir(cfg.run_dir)
    if rank_zero_only.rank == 0:
        log.info("Run directory: %s", run_dir)
        write_config(cfg, run_dir)
        write_json(datamodule.split_record, run_dir / "splits.json")
    fit = fit_race if plan.race is not None else fit_fixed
    trainer, task, fit_data, extra = fit(plan, datamodule, run_dir)
    winner = extra.pop("_winner", None)
    val_metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("val/")}
    best = trainer.checkpoint_callback.best_model_path if trainer.checkpoint_callback else ""
    tested = trainer.test(task, datamodule=fit_data, ckpt_path=best or None, verbose=False, weights_only=True)
    results = collect_results(cfg, command, task, datamodule, trainer, val_metrics, tested, run_dir, start)
    results.update({"finetune": dict(task.hparams.finetune), "plan": plan.to_dict(), **extra})
    store = getattr(fit_data, "store", None)
    if store is not None:
        results["feature_cache"] = {**results.get("feature_cache", plan.cache), **fit_data.report()}
        store.release()
    results.setdefault("linear_probe", probe_report(trainer))  # head_solver=lbfgs / lpft (or None)
    if plan.advice is not None:
        results["advice"] = plan.advice
    if plan.race is not None:
        results.update(finish_race(winner, run_dir))
    if trainer.is_global_zero:
        write_json(results, run_dir / "results.json")
        log.info("%s", metrics_table(results["metrics"]))
        log.info("Results: %s", run_dir / "results.json")
    return results, trainer, task, datamodule, run_dir


def fit_fixed(plan: Plan, datamodule, run_dir: Path) -> tuple[pl.Trainer, object, object, dict]:
    """One fit with the planned strategy (on cached features where planning said so)."""
    cfg = plan.cfg
    task = build_task(cfg, datamodule, plan.weights)
    trainer = build_trainer(cfg, run_dir, task.monitor, task.monitor_mode)
    fit_data = build_feature_cache(cfg, datamodule, task, run_dir) if plan.cache["used"] else datamodule
    trainer.fit(task, datamodule=fit_data, ckpt_path=cfg.ckpt_path, weights_only=True)  # quiet_console filters noise
    return trainer, task, fit_data, {"feature_cache": dict(plan.cache)}


def fit_race(plan: Plan, datamodule, run_dir: Path) -> tuple[pl.Trainer, object, object, dict]:
    """`finetune=auto`: successive halving over the planned candidates (see transferkit.race)."""
    from transferkit.commands.racing import race_table, run_race

    if plan.cfg.get("ckpt_path"):
        raise ConfigError("ckpt_path=... cannot resume a finetune=auto race; resume with the winner's "
                          "strategy (finetune=<results.json auto.winner's strategy>) instead.")
    race = plan.race
    winner, entries = run_race(plan.cfg, race.candidates, race.rungs, datamodule, plan.weights, run_dir)
    auto = {**race.to_dict(), "candidates": [e.to_dict() for e in entries], "winner": winner.candidate.name,
            "seconds": round(sum(e.seconds for e in entries), 2)}
    if winner.trainer.is_global_zero:
        log.info("%s", race_table(entries, race.rungs, winner.candidate.name))
    cache = {"used": winner.candidate.finetune.get("strategy") == "freeze" and hasattr(winner.data, "store"),
             "requested": None, "reasons": [f"race winner {winner.candidate.name}"]}
    return winner.trainer, winner.task, winner.data, {"auto": auto, "feature_cache": cache,
                                                      "linear_probe": winner.probe, "_winner": winner}


def finish_race(winner, run_dir: Path) -> dict:
    """The winner's checkpoints and metrics become the run's own."""
    from transferkit.commands.racing import adopt_winner

    if not winner.trainer.is_global_zero:
        return {}
    paths = adopt_winner(winner, run_dir)
    return {"best_checkpoint": paths.get("best"), "last_checkpoint": paths.get("last")}


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
