"""Pieces every training command shares: train + test + results.json."""

from __future__ import annotations

import logging
import shlex
import signal
import time
from pathlib import Path

import pytorch_lightning as pl
from pytorch_lightning.utilities import rank_zero_only
from pytorch_lightning.utilities.exceptions import SIGTERMException

from transferkit.data.curation import curation_summary
from transferkit.errors import ConfigError
from transferkit.evaluation.reports.lr_plot import LRSearch, plot_lr_search
from transferkit.evaluation.reports.run_report import finish_run_report
from transferkit.planning.spec import RunSpec
from transferkit.runtime.checkpoint_io import checkpoint_meta, checkpoint_problem, remove_stale_temps
from transferkit.runtime.guards import EXIT_SIGNAL, RunDiverged, RunInterrupted, signal_name
from transferkit.tasks.linear_probe import probe_report
from transferkit.training.builders import build_feature_cache, build_task, build_trainer
from transferkit.training.calibrate import fit_calibration, record_calibration
from transferkit.training.console import metrics_table
from transferkit.training.thresholds import fit_thresholds, record_thresholds
from transferkit.training.metrics_files import join_metrics, set_aside_metrics
from transferkit.tasks.loading import ENSEMBLE_FILE
from transferkit.training.race.ensemble import finish_ensemble
from transferkit.training.race.legs import adopt_winner, race_table, run_race
from transferkit.training.race.progress import RaceProgress, read_progress
from transferkit.training.race.rules import RACE_PROGRESS
from transferkit.training.resume import (carried_over, check_same_splits, read_results, resume_callbacks,
                                         session_record, write_resumed_config)
from transferkit.data.vanished import skipped_mid_run
from transferkit.training.rundir import lock_run_dir, unlock_run_dir
from transferkit.training.rundir import create_run_dir, reuse_run_dir, write_config, write_json, write_spec

log = logging.getLogger("transferkit")



def train_and_test(spec: RunSpec, datamodule, callbacks: list[pl.Callback] | None = None,
                   ) -> tuple[dict, pl.Trainer, object, object, Path]:
    """Fit the planned task (or race the candidates of `finetune=auto`), evaluate the best
    checkpoint, write results.json (`status` running, then completed, interrupted or diverged).
    `callbacks` join the fit's trainer (e.g. a search's pruning callback; not a race's legs)."""
    start = time.time()
    run_dir, session = open_run(spec, datamodule)
    try:  # the run directory is this process's until the run ends (one writer: runtime/lock.py)
        return finish(spec, datamodule, run_dir, session, start, callbacks)
    finally:
        unlock_run_dir(run_dir)


def finish(spec: RunSpec, datamodule, run_dir: Path, session: dict, start: float,
           callbacks: list[pl.Callback] | None) -> tuple[dict, pl.Trainer, object, object, Path]:
    try:
        results, trainer, task = fit_and_test(spec, datamodule, run_dir, start, callbacks)
        if spec.lr_search is not None:
            results["lr_find"] = record_search(spec.lr_search, run_dir)
    except BaseException as err:
        raise record_stop(err, spec, run_dir, session, start) from None
    finally:
        if spec.outputs.resume and rank_zero_only.rank == 0:
            join_metrics(run_dir)
    wall = round(time.time() - start + session.get("wall_seconds", 0.0), 2)
    results = {**carried_over(session), **results, "status": "completed", "wall_seconds": wall}
    if trainer.is_global_zero:
        write_json(results, run_dir / "results.json")
        log.info("%s", metrics_table(results["metrics"], results.get("headline")))
        log.info("Results: %s", run_dir / "results.json")
        finish_run_report(spec.callbacks.report, trainer, datamodule, run_dir, results)
    return results, trainer, task, datamodule, run_dir


def open_run(spec: RunSpec, datamodule) -> tuple[Path, dict]:
    """A new run directory, or with `resume=` the run being continued; results.json says running."""
    resumed, ckpt_path = spec.outputs.resume, spec.outputs.ckpt_path
    run_dir = reuse_run_dir(resumed) if resumed else create_run_dir(spec.outputs.run_dir, spec.trainer.num_nodes)
    lock_run_dir(run_dir, key="resume" if resumed else "run_dir")
    previous, resumed_from = read_results(run_dir) if resumed else {}, None
    if resumed and ckpt_path:
        resumed_from = {"checkpoint": str(ckpt_path), **checkpoint_meta(Path(ckpt_path))}
    elif resumed:  # a finetune=auto race stopped mid-way: each candidate continues from its own checkpoint
        resumed_from = {"race": str(run_dir / RACE_PROGRESS)}
    session = session_record(run_dir, spec.command, previous, resumed_from)
    if rank_zero_only.rank == 0:
        log.info("Run directory: %s", run_dir)
        if resumed:
            check_same_splits(datamodule.split_record, run_dir, spec.data.root)
            remove_stale_temps(run_dir / "checkpoints")
            if "global_step" in resumed_from:
                set_aside_metrics(run_dir, resumed_from["global_step"])
            write_resumed_config(spec.config, run_dir)
        else:
            write_config(spec.config, run_dir)
            write_spec(spec, run_dir)
            write_json(datamodule.split_record, run_dir / "splits.json")
        write_json(session, run_dir / "results.json")
    return run_dir, session


def record_search(search: dict, run_dir: Path) -> dict:
    """The LR search planning made (`optimizer.lr=find`): its plot in the run directory."""
    png = run_dir / "lr_find.png"
    if rank_zero_only.rank == 0:
        plot_lr_search(LRSearch(**search), png, "optimizer.lr=find")
    return {**LRSearch(**search).to_dict(), "plot": str(png)}


def fit_and_test(spec: RunSpec, datamodule, run_dir: Path, start: float,
                 callbacks: list[pl.Callback] | None = None) -> tuple[dict, pl.Trainer, object]:
    race = spec.finetune.race
    if race is not None:
        trainer, task, fit_data, extra = fit_race(spec, datamodule, run_dir)
    else:
        trainer, task, fit_data, extra = fit_fixed(spec, datamodule, run_dir, callbacks)
    winner = extra.pop("_winner", None)
    val_metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("val/")}
    if not val_metrics and spec.outputs.resume:
        # Resumed after its last epoch (killed while testing): this session validated nothing, so the
        # final model's val metrics are measured again (the same weights and data give the same values).
        trainer.validate(task, datamodule=fit_data, verbose=False)
        val_metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("val/")}
    best = trainer.checkpoint_callback.best_model_path if trainer.checkpoint_callback else ""
    tested = trainer.test(task, datamodule=fit_data, ckpt_path=best or None, verbose=False, weights_only=True)
    results = collect_results(spec, task, datamodule, trainer, val_metrics, tested, run_dir, start)
    has_test = datamodule.sizes().get("test", 0) > 0
    calibration = fit_calibration(spec.calibration, task, fit_data, trainer, has_test)
    thresholds = fit_thresholds(task, fit_data, trainer, has_test)  # multi-label only
    # test(ckpt_path=best) reloads the callbacks' states saved in best.ckpt; the path is the one before.
    results.update({"best_checkpoint": best or None, "finetune": dict(task.hparams.finetune),
                    "plan": spec.record(), **extra})
    store = getattr(fit_data, "store", None)
    if store is not None:
        results["feature_cache"] = {**results.get("feature_cache", spec.finetune.cache), **fit_data.report()}
        store.release()
    results.setdefault("linear_probe", probe_report(trainer))  # head_solver=lbfgs / lpft (or None)
    if spec.finetune.advice is not None:
        results["advice"] = spec.finetune.advice
    if race is not None:
        results.update(finish_race(winner, run_dir))
    record_calibration(calibration, results)  # after the race adopted the winner's checkpoints
    record_thresholds(thresholds, results)
    if race is not None and race.combine == "ensemble":  # the run's model: the finishers, averaged
        results.update(finish_ensemble(spec, trainer, datamodule, run_dir, results, has_test))
    elif race is None and spec.outputs.resume and (run_dir / ENSEMBLE_FILE).is_file():
        # a finished race resumed to train its winner on: the ensemble takes the winner as it is now
        earlier = read_results(run_dir).get("auto") or {}
        if earlier.get("winner"):
            results.update(finish_ensemble(spec, trainer, datamodule, run_dir, {**results, "auto": earlier}, has_test))
    return results, trainer, task


def record_stop(err: BaseException, spec: RunSpec, run_dir: Path, session: dict, start: float) -> BaseException:
    """results.json for a run that stopped early; returns what to raise (a RunStopped for signals)."""
    stop = stop_of(err, spec.finetune.race is not None, run_dir, session["command"])
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


def stop_of(err: BaseException, racing: bool, run_dir: Path, command: str) -> BaseException:
    """A signal (Lightning's SIGTERMException, or a second Ctrl+C) becomes a RunInterrupted."""
    if isinstance(err, SIGTERMException):
        code = err.code if isinstance(err.code, int) else EXIT_SIGNAL[signal.SIGTERM]
    elif isinstance(err, (KeyboardInterrupt, SystemExit)):
        code = EXIT_SIGNAL[signal.SIGINT]  # Lightning turns a KeyboardInterrupt into exit(1)
    else:
        return err
    name = signal_name(code)
    if racing and (run_dir / RACE_PROGRESS).is_file():
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


def fit_fixed(spec: RunSpec, datamodule, run_dir: Path, callbacks: list[pl.Callback] | None = None,
              ) -> tuple[pl.Trainer, object, object, dict]:
    """One fit with the planned strategy (on cached features where planning said so)."""
    task = build_task(spec, datamodule, spec.model.weights)
    trainer = build_trainer(spec, run_dir, task.monitor, task.monitor_mode,
                            extra_callbacks=resume_callbacks(spec, run_dir) + list(callbacks or []))
    fit_data = build_feature_cache(spec, datamodule, task, run_dir) if spec.finetune.cache_used else datamodule
    trainer.fit(task, datamodule=fit_data, ckpt_path=spec.outputs.ckpt_path, weights_only=True)
    return trainer, task, fit_data, {"feature_cache": dict(spec.finetune.cache)}


def fit_race(spec: RunSpec, datamodule, run_dir: Path) -> tuple[pl.Trainer, object, object, dict]:
    """`finetune=auto`: successive halving over the planned candidates (see transferkit.training.race.rules)."""
    if spec.outputs.ckpt_path:
        raise ConfigError("ckpt_path=... cannot resume a finetune=auto race; resume with the winner's "
                          "strategy (finetune=<results.json auto.winner's strategy>) instead.")
    race = spec.finetune.race
    previous = read_progress(run_dir) if spec.outputs.resume else None
    progress = RaceProgress(run_dir, race, spec.finetune.advice, previous)
    winner, entries = run_race(spec, race.candidates, race.rungs, datamodule, run_dir, progress,
                               keep_finishers=race.combine == "ensemble")
    auto = {**race.to_dict(), "metric": winner.task.monitor, "candidates": [e.to_dict() for e in entries],
            "winner": winner.candidate.name, "seconds": round(sum(e.seconds for e in entries), 2)}
    if winner.trainer.is_global_zero:  # the table names the metric the legs were scored on (val/acc, val/map)
        log.info("%s", race_table(entries, race.rungs, winner.candidate.name, winner.task.monitor))
    cache = {"used": winner.candidate.finetune.get("strategy") == "freeze" and hasattr(winner.data, "store"),
             "requested": None, "reasons": [f"race winner {winner.candidate.name}"]}
    return winner.trainer, winner.task, winner.data, {"auto": auto, "feature_cache": cache,
                                                      "linear_probe": winner.probe, "_winner": winner}


def finish_race(winner, run_dir: Path) -> dict:
    """The winner's checkpoints and metrics become the run's own."""
    if not winner.trainer.is_global_zero:
        return {}
    paths = adopt_winner(winner, run_dir)
    return {"best_checkpoint": paths.get("best"), "last_checkpoint": paths.get("last")}


def collect_results(spec: RunSpec, task, datamodule, trainer, val_metrics, tested, run_dir, start) -> dict:
    metrics = dict(val_metrics)
    callback = trainer.checkpoint_callback
    if callback is not None and callback.best_model_score is not None:
        metrics[f"best/{callback.monitor}"] = float(callback.best_model_score)
    for row in tested or []:
        metrics.update({k: float(v) for k, v in row.items()})
    sizes = datamodule.sizes()
    return {
        "command": spec.command,
        "task": spec.task.kind,
        "recipe": spec.recipe,
        "strategy": task.plan.strategy,
        "backbone": spec.model.backbone,
        "weights": str(spec.model.options.get("weights")),
        "format_version": spec.format_version,
        "data": {"root": spec.data.root, "embedded": spec.data.embedded,
                 "num_classes": len(datamodule.class_names), "class_names": list(datamodule.class_names),
                 "train_size": sizes.get("train", 0), "val_size": sizes.get("val", 0),
                 "test_size": sizes.get("test", 0),
                 "skipped_files": [[str(p), r] for p, r in [*getattr(datamodule, "skipped", []),
                                                             *skipped_mid_run(datamodule)]],
                 **curation_summary(getattr(datamodule, "split_record", {}))},
        "params": task.num_params(),
        "metrics": metrics,
        "monitor": {"metric": callback.monitor, "mode": callback.mode} if callback else None,  # sweep tables sort by it
        "headline": headline_metrics(spec.imbalance),
        "best_checkpoint": callback.best_model_path if callback else None,
        "last_checkpoint": str(run_dir / "checkpoints" / "last.ckpt") if callback else None,
        "epochs": trainer.current_epoch,
        "wall_seconds": round(time.time() - start, 2),
        "run_dir": str(run_dir),
    }


def headline_metrics(imbalance: dict | None) -> list[str] | None:
    """The metrics a long-tailed run reports first (accuracy hides a class that is never predicted)."""
    if not imbalance or not imbalance.get("long_tailed"):
        return None
    return ["test/balanced_acc", "test/f1", "test/acc"]
