"""Pieces every training command shares: train + test + results.json."""

from __future__ import annotations

import logging
import shlex
import signal
import time
from pathlib import Path

import pytorch_lightning as pl
from omegaconf import DictConfig
from pytorch_lightning.utilities import rank_zero_only
from pytorch_lightning.utilities.exceptions import SIGTERMException

from transferkit.builders import build_datamodule, build_feature_cache, build_task, build_trainer
from transferkit.checkpoint_io import checkpoint_meta, checkpoint_problem, remove_stale_temps
from transferkit.commands.metrics_files import join_metrics, set_aside_metrics
from transferkit.commands.resuming import (
    carried_over,
    check_same_splits,
    read_results,
    resume_callbacks,
    session_record,
    write_resumed_config,
)
from transferkit.errors import ConfigError
from transferkit.loading import read_checkpoint, require
from transferkit.lr_finder import wants_search
from transferkit.planning import Plan, plan_model, plan_training
from transferkit.race import RACE_PROGRESS
from transferkit.reports.run_report import finish_run_report
from transferkit.run_guards import EXIT_SIGNAL, RunDiverged, RunInterrupted, signal_name
from transferkit.rundir import create_run_dir, reuse_run_dir, write_config, write_json
from transferkit.tasks.linear_probe import probe_report

log = logging.getLogger("transferkit")

LIGHTNING_CKPT_NAMES = ("last", "best", "hpc", "registry")  # names trainer.fit(ckpt_path=...) looks up


def plan_run(cfg: DictConfig) -> tuple[Plan, object]:
    """Plan the run (model, weights, input format, fine-tuning, cache) and scan its data."""
    plan = plan_model(cfg)
    datamodule = build_datamodule(plan.cfg)
    datamodule.scan()
    return plan_training(plan, datamodule), datamodule


def train_and_test(cfg: DictConfig, command: str, callbacks: list[pl.Callback] | None = None,
                   ) -> tuple[dict, pl.Trainer, object, object, Path]:
    """Fit the configured task (or race the candidates of `finetune=auto`), evaluate the best
    checkpoint, write results.json (`status` running, then completed, interrupted or diverged).
    `callbacks` join the fit's trainer (e.g. a search's pruning callback; not a race's legs)."""
    start = time.time()
    check_ckpt_path(cfg)
    if cfg.get("ckpt_path"):  # Lightning resumes from it later: refuse a file that would run code now
        read_checkpoint(require(cfg.ckpt_path, "ckpt_path", "a checkpoint to resume from"))
    pl.seed_everything(cfg.seed, workers=True, verbose=False)
    plan, datamodule = plan_run(cfg)
    search = search_lr(plan, datamodule) if wants_search(plan.cfg) else None
    cfg = plan.cfg
    run_dir, session = open_run(cfg, command, datamodule)
    try:
        results, trainer, task = fit_and_test(plan, datamodule, run_dir, command, start, callbacks)
        if search is not None:
            results["lr_find"] = record_search(search, run_dir)
    except BaseException as err:
        raise record_stop(err, plan, run_dir, session, start) from None
    finally:
        if cfg.get("resume") and rank_zero_only.rank == 0:
            join_metrics(run_dir)
    wall = round(time.time() - start + session.get("wall_seconds", 0.0), 2)
    results = {**carried_over(session), **results, "status": "completed", "wall_seconds": wall}
    if trainer.is_global_zero:
        write_json(results, run_dir / "results.json")
        log.info("%s", metrics_table(results["metrics"]))
        log.info("Results: %s", run_dir / "results.json")
        finish_run_report(cfg, trainer, datamodule, run_dir, results)
    return results, trainer, task, datamodule, run_dir


def check_ckpt_path(cfg: DictConfig) -> None:
    value = cfg.get("ckpt_path")
    if value is not None and str(value) in LIGHTNING_CKPT_NAMES and not cfg.get("resume"):
        raise ConfigError(f"ckpt_path={value!r} would have Lightning look for that checkpoint in this new run "
                          "directory and silently start afresh; to continue a run use resume=last (the newest "
                          "run under outputs/) or resume=<run directory>.")


def num_nodes(cfg: DictConfig) -> int:
    return int(cfg.trainer.get("num_nodes") or 1)


def open_run(cfg: DictConfig, command: str, datamodule) -> tuple[Path, dict]:
    """A new run directory, or with `resume=` the run being continued; results.json says running."""
    resumed = cfg.get("resume")
    run_dir = reuse_run_dir(resumed) if resumed else create_run_dir(cfg.run_dir, num_nodes(cfg))
    previous, resumed_from = read_results(run_dir) if resumed else {}, None
    if resumed and cfg.get("ckpt_path"):
        resumed_from = {"checkpoint": str(cfg.ckpt_path), **checkpoint_meta(Path(cfg.ckpt_path))}
    elif resumed:  # a finetune=auto race stopped mid-way: each candidate continues from its own checkpoint
        resumed_from = {"race": str(run_dir / RACE_PROGRESS)}
    session = session_record(run_dir, command, previous, resumed_from)
    if rank_zero_only.rank == 0:
        log.info("Run directory: %s", run_dir)
        if resumed:
            check_same_splits(datamodule.split_record, run_dir)
            remove_stale_temps(run_dir / "checkpoints")
            if "global_step" in resumed_from:
                set_aside_metrics(run_dir, resumed_from["global_step"])
            write_resumed_config(cfg, run_dir)
        else:
            write_config(cfg, run_dir)
            write_json(datamodule.split_record, run_dir / "splits.json")
        write_json(session, run_dir / "results.json")
    return run_dir, session


def search_lr(plan: Plan, datamodule):
    """`optimizer.lr=find`: Lightning's LR range test on the planned run; the plan then trains with
    its suggestion (config.yaml records the number). The random streams are left as they were."""
    from transferkit.lr_finder import check_searchable, find_lr, with_lr
    from transferkit.rng_state import preserved_rng

    check_searchable(plan.cfg, "fit")
    with preserved_rng():
        search = find_lr(plan.cfg, datamodule, plan.weights)
    plan.cfg = with_lr(plan.cfg, search.suggestion)
    plan.notes.append(f"optimizer.lr=find: trains with the suggested base LR {search.suggestion:.3g}")
    return search


def record_search(search, run_dir: Path) -> dict:
    from transferkit.lr_finder import plot_lr_search

    png = run_dir / "lr_find.png"
    if rank_zero_only.rank == 0:
        plot_lr_search(search, png, "optimizer.lr=find")
    return {**search.to_dict(), "plot": str(png)}


def fit_and_test(plan: Plan, datamodule, run_dir: Path, command: str, start: float,
                 callbacks: list[pl.Callback] | None = None) -> tuple[dict, pl.Trainer, object]:
    cfg = plan.cfg
    if plan.race is not None:
        trainer, task, fit_data, extra = fit_race(plan, datamodule, run_dir)
    else:
        trainer, task, fit_data, extra = fit_fixed(plan, datamodule, run_dir, callbacks)
    winner = extra.pop("_winner", None)
    val_metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("val/")}
    if not val_metrics and cfg.get("resume"):
        # Resumed after its last epoch (killed while testing): this session validated nothing, so the
        # final model's val metrics are measured again (the same weights and data give the same values).
        trainer.validate(task, datamodule=fit_data, verbose=False)
        val_metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("val/")}
    best = trainer.checkpoint_callback.best_model_path if trainer.checkpoint_callback else ""
    tested = trainer.test(task, datamodule=fit_data, ckpt_path=best or None, verbose=False, weights_only=True)
    results = collect_results(cfg, command, task, datamodule, trainer, val_metrics, tested, run_dir, start)
    # test(ckpt_path=best) reloads the callbacks' states saved in best.ckpt; the path is the one before.
    results.update({"best_checkpoint": best or None, "finetune": dict(task.hparams.finetune),
                    "plan": plan.to_dict(), **extra})
    store = getattr(fit_data, "store", None)
    if store is not None:
        results["feature_cache"] = {**results.get("feature_cache", plan.cache), **fit_data.report()}
        store.release()
    results.setdefault("linear_probe", probe_report(trainer))  # head_solver=lbfgs / lpft (or None)
    if plan.advice is not None:
        results["advice"] = plan.advice
    if plan.race is not None:
        results.update(finish_race(winner, run_dir))
    return results, trainer, task


def record_stop(err: BaseException, plan: Plan, run_dir: Path, session: dict, start: float) -> BaseException:
    """results.json for a run that stopped early; returns what to raise (a RunStopped for signals)."""
    stop = stop_of(err, plan, run_dir, session["command"])
    record = {**session, "status": getattr(stop, "status", "failed"),
              "wall_seconds": round(time.time() - start + session.get("wall_seconds", 0.0), 2),
              "message": str(stop).splitlines()[0] if str(stop) else type(stop).__name__}
    if isinstance(stop, RunInterrupted):
        record.update({"signal": signal_name(stop.exit_code), "exit_code": stop.exit_code})
    if isinstance(stop, RunDiverged):
        record.update({"exit_code": stop.exit_code, "diverged": stop.record})
    last = run_dir / "checkpoints" / "last.ckpt"
    if last.is_file() and checkpoint_problem(last) is None:
        record.update({"last_checkpoint": str(last), **checkpoint_meta(last)})
    if rank_zero_only.rank == 0:
        write_json(record, run_dir / "results.json")  # cli.main prints the message
    return stop


def stop_of(err: BaseException, plan: Plan, run_dir: Path, command: str) -> BaseException:
    """A signal (Lightning's SIGTERMException, or a second Ctrl+C) becomes a RunInterrupted."""
    if isinstance(err, SIGTERMException):
        code = err.code if isinstance(err.code, int) else EXIT_SIGNAL[signal.SIGTERM]
    elif isinstance(err, (KeyboardInterrupt, SystemExit)):
        code = EXIT_SIGNAL[signal.SIGINT]  # Lightning turns a KeyboardInterrupt into exit(1)
    else:
        return err
    name = signal_name(code)
    if plan.race is not None and (run_dir / RACE_PROGRESS).is_file():
        return RunInterrupted(f"{name} stopped the finetune=auto race in {run_dir}; resume it with: "
                              f"python -m transferkit fit resume={shlex.quote(str(run_dir))}", code)
    last = run_dir / "checkpoints" / "last.ckpt"
    if not last.is_file() or command != "fit":
        why = "before its first checkpoint" if command == "fit" else f"(resume continues fit runs, not {command})"
        return RunInterrupted(f"{name} stopped {run_dir} {why}; run the same command again.", code)
    meta = checkpoint_meta(last)
    done = meta["epochs_done"]
    return RunInterrupted(f"{name} stopped the run at step {meta['global_step']}, after {done} full "
                          f"epoch{'' if done == 1 else 's'}; resume it with: "
                          f"python -m transferkit fit resume={shlex.quote(str(run_dir))}", code)


def fit_fixed(plan: Plan, datamodule, run_dir: Path, callbacks: list[pl.Callback] | None = None,
              ) -> tuple[pl.Trainer, object, object, dict]:
    """One fit with the planned strategy (on cached features where planning said so)."""
    cfg = plan.cfg
    task = build_task(cfg, datamodule, plan.weights)
    trainer = build_trainer(cfg, run_dir, task.monitor, task.monitor_mode,
                            extra_callbacks=resume_callbacks(cfg, run_dir) + list(callbacks or []))
    fit_data = build_feature_cache(cfg, datamodule, task, run_dir) if plan.cache["used"] else datamodule
    trainer.fit(task, datamodule=fit_data, ckpt_path=cfg.ckpt_path, weights_only=True)  # quiet_console filters noise
    return trainer, task, fit_data, {"feature_cache": dict(plan.cache)}


def fit_race(plan: Plan, datamodule, run_dir: Path) -> tuple[pl.Trainer, object, object, dict]:
    """`finetune=auto`: successive halving over the planned candidates (see transferkit.race)."""
    from transferkit.commands.race_progress import RaceProgress, read_progress
    from transferkit.commands.racing import race_table, run_race

    if plan.cfg.get("ckpt_path"):
        raise ConfigError("ckpt_path=... cannot resume a finetune=auto race; resume with the winner's "
                          "strategy (finetune=<results.json auto.winner's strategy>) instead.")
    race = plan.race
    previous = read_progress(run_dir) if plan.cfg.get("resume") else None
    progress = RaceProgress(run_dir, race, plan.advice, previous)
    winner, entries = run_race(plan.cfg, race.candidates, race.rungs, datamodule, plan.weights, run_dir, progress)
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
        "monitor": {"metric": callback.monitor, "mode": callback.mode} if callback else None,  # sweep tables sort by it
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
