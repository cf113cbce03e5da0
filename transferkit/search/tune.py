"""The Optuna search of `tune`: each trial a fit run, scored, pruned, recorded; the best as a recipe.

The tune directory (a run directory) holds `study.db` (every trial, in SQLite), `trials/<n>/` (each
trial a normal fit run), `trials.csv`, `results.json`, `best_recipe.yaml` (re-run it: `fit
recipe=<tune dir>/best_recipe.yaml`) and Optuna's history and importance plots. A resumed search keeps
its finished trials, runs an interrupted one again with its values, and fills the study up to
`tune.n_trials`. Trials are composed and run by the caller (`RunTrial`, `Compose`): this package
sees plain dicts, never the CLI.
"""

from __future__ import annotations

import copy
import logging
import os
import shlex
import signal
import socket
import time
from collections.abc import Callable
from pathlib import Path

from transferkit.config.files import leaves, load_recipe_file, recipe_path
from transferkit.errors import ConfigError
from transferkit.evaluation.reports.tune_report import recipe_text, save_plots, write_trials_csv
from transferkit.runtime.guards import EXIT_SIGNAL, RunInterrupted
from transferkit.search.pruning import PruneOnValidation
from transferkit.search.space import (Param, format_value, group_names, is_search_key, override_key, parse_space,
                                      sample, select, trial_overrides)
from transferkit.search.study import FINISHED, best_trial, build_pruner, build_sampler, import_optuna, open_study
from transferkit.tasks.loading import task_classes
from transferkit.training.resume import read_results
from transferkit.training.rundir import create_run_dir, reuse_run_dir, write_config, write_json

log = logging.getLogger("transferkit")

RunTrial = Callable[[list[str], list], dict]  # a trial's command line and callbacks -> its fit run's results
Compose = Callable[[list[str]], dict]  # a command line -> its composed config, as a plain dict


class TrialFailed(Exception):
    """One trial failed (a config the space allowed but the run refused, a diverged loss): the
    search goes on; the study records it as FAIL with the message."""


def check_one_process(trainer: dict) -> None:
    devices = trainer.get("devices")
    if (isinstance(devices, int) and devices > 1 or "ddp" in str(trainer.get("strategy"))
            or int(trainer.get("num_nodes") or 1) > 1):
        raise ConfigError("tune runs its trials in this process, and Lightning's DDP would relaunch the whole "
                          "search in every worker; search on one device (trainer.devices=1), or run trials in "
                          "parallel as separate `tune` processes sharing tune.storage.")


def monitor_of(task_kind: str, tune: dict) -> tuple[str, str]:
    """The metric a trial is scored by and whether larger is better (`maximize`/`minimize`)."""
    task = task_classes()[str(task_kind)]
    metric = str(tune.get("metric") or task.monitor)
    mode = task.monitor_mode if metric == task.monitor else ("min" if "loss" in metric else "max")
    direction = tune.get("direction") or ("maximize" if mode == "max" else "minimize")
    if direction not in ("maximize", "minimize"):
        raise ConfigError(f"tune.direction={direction!r} is unknown; use maximize, minimize or null.")
    return metric, direction


def trial_value(results: dict, metric: str) -> float:
    """The trial's score from its results.json: the best checkpoint's value of `metric` when the
    checkpoint monitored it, else the last validated one."""
    metrics = results.get("metrics", {})
    for key in (f"best/{metric}", metric):
        if key in metrics:
            return float(metrics[key])
    raise ConfigError(f"tune.metric={metric!r} is not among the trial's metrics {sorted(metrics)}; "
                      "use one of its val/* keys.")


def make_objective(optuna, base: list[str], params: list[Param], tune_dir: Path, metric: str, run_trial: RunTrial):
    """Optuna's objective: sample, run the trial as a fit run in trials/<n>, return its score."""
    def objective(trial) -> float:
        overrides = trial_overrides(base, params, sample(trial, params))
        run_dir = tune_dir / "trials" / str(trial.number)
        for key, value in {"overrides": overrides, "run_dir": str(run_dir), "host": socket.gethostname(),
                           "pid": os.getpid()}.items():
            trial.set_user_attr(key, value)
        log.info("trial %d: %s", trial.number, " ".join(o for o in overrides if o not in base))
        pruning = PruneOnValidation(trial, metric)
        try:
            run_trial([*overrides, f"run_dir={run_dir}"], [pruning])
        except (RunInterrupted, KeyboardInterrupt):
            trial.set_user_attr("interrupted", True)
            raise
        except Exception as err:  # noqa: BLE001 - one trial's failure is recorded, the search goes on
            message = f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"
            trial.set_user_attr("error", message)
            if not any(t.state.name in FINISHED for t in trial.study.trials):
                raise  # the first trial failed: most likely the base config, not the sampled values
            log.warning("trial %d failed: %s", trial.number, message)
            raise TrialFailed(message) from err
        value = trial_value(read_results(run_dir), metric)
        if pruning.pruned_at is not None:
            trial.set_user_attr("pruned_at_epoch", pruning.pruned_at)
            raise optuna.TrialPruned(f"pruned after epoch {pruning.pruned_at}")
        return value

    return objective


def after_trial(metric: str, write_progress):
    def callback(study, trial) -> None:
        best = best_trial(study)
        value = f": {metric} {trial.value:.4f}" if trial.value is not None else ""
        tail = f"; best so far: trial {best.number}, {best.value:.4f}" if best is not None else ""
        log.info("trial %d %s%s%s", trial.number, trial.state.name.lower(), value, tail)
        write_progress(study)

    return callback


def trial_rows(trials: list, params: list[str]) -> tuple[list[dict], list[str]]:
    """trials.csv: one row per trial (number, state, value, its sampled parameters, run directory,
    seconds), and the header."""
    fields = ["number", "state", "value", *params, "pruned_at_epoch", "run_dir", "seconds", "error"]
    rows = []
    for t in trials:
        seconds = (t.datetime_complete - t.datetime_start).total_seconds() if t.datetime_complete else None
        rows.append({"number": t.number, "state": t.state.name, "value": t.value,
                     **{p: format_value(t.params[p]) if p in t.params else "" for p in params},
                     "pruned_at_epoch": t.user_attrs.get("pruned_at_epoch", ""),
                     "run_dir": t.user_attrs.get("run_dir", ""),
                     "seconds": f"{seconds:.1f}" if seconds is not None else "", "error": t.user_attrs.get("error", "")})
    return rows, fields


def base_recipe(recipe) -> dict | None:
    """The search's own recipe file as a dict (a name from recipes/ or a path)."""
    if not recipe:
        return None
    path = Path(str(recipe)).expanduser() if str(recipe).endswith((".yaml", ".yml")) else recipe_path(str(recipe))
    return load_recipe_file(str(path))[1]


def recipe_body(base: dict | None, overrides: list[str], composed: dict) -> dict:
    """A recipe that composes to `composed`: the base recipe's group choices with the overrides' group
    choices on top, and every value the base recipe or an override set (as `composed` has it)."""
    base = dict(base or {})
    defaults = list(base.pop("defaults", None) or [])
    groups = set(group_names())
    keys = [key for key, _ in leaves(base)]
    for item in overrides:
        key, value = override_key(item), item.split("=", 1)[1] if "=" in item else None
        if is_search_key(key) or key == "recipe" or item.startswith("~"):
            continue
        if key in groups:
            defaults = [d for d in defaults if not (isinstance(d, dict) and f"override /{key}" in d)]
            defaults.append({f"override /{key}": value})
        else:
            keys.append(key)
    values: dict = {}
    for key in dict.fromkeys(keys):
        assign(values, key, select(composed, key, None))
    return {"defaults": defaults, **values} if defaults else values


def assign(node: dict, key: str, value) -> None:
    """Set a dotted key of a nested dict, creating the dicts on its way; a dict value merges into a dict."""
    *parents, last = key.split(".")
    for part in parents:
        if not isinstance(node.get(part), dict):
            node[part] = {}
        node = node[part]
    if isinstance(value, dict) and isinstance(node.get(last), dict):
        for child, item in value.items():
            assign(node[last], child, item)
    else:
        node[last] = copy.deepcopy(value)


def write_best_recipe(study, recipe, tune_dir: Path, metric: str, compose: Compose) -> Path | None:
    best = best_trial(study)
    if best is None:
        return None
    overrides = list(best.user_attrs["overrides"])
    finished = sum(t.state.name in FINISHED for t in study.trials)
    header = [f"The best of {finished} trials in {tune_dir}: trial {best.number}, {metric} {best.value:.4f}.",
              f"Its run: {best.user_attrs.get('run_dir')}",
              "Re-run it: python -m transferkit fit recipe=<this file> (add key=value overrides as usual)."]
    path = tune_dir / "best_recipe.yaml"
    path.write_text(recipe_text(recipe_body(base_recipe(recipe), overrides, compose(overrides)), header))
    return path


def write_outputs(study, config: dict, params: list[Param], tune_dir: Path, metric: str, direction: str,
                  storage: str, status: str, seconds: float, compose: Compose, plots: bool = True) -> dict:
    """trials.csv, results.json and (at the end of a session) best_recipe.yaml and the two plots."""
    tune = config["tune"]
    trials = study.trials
    csv_path = write_trials_csv(*trial_rows(trials, [p.path for p in params]), tune_dir / "trials.csv")
    best = best_trial(study)
    counts = {state: sum(t.state.name == state for t in trials) for state in ("COMPLETE", "PRUNED", "FAIL", "RUNNING")}
    recipe = write_best_recipe(study, config.get("recipe"), tune_dir, metric, compose) if plots else None
    results = {
        "command": "tune", "status": status, "metric": metric, "direction": direction,
        "n_trials": int(tune["n_trials"]), "trials": {k.lower(): v for k, v in counts.items()},
        "best": None if best is None else {"trial": best.number, "value": best.value, "params": best.params,
                                           "run_dir": best.user_attrs.get("run_dir")},
        "best_recipe": str(recipe) if recipe else None,
        "fit_command": f"python -m transferkit fit recipe={shlex.quote(str(recipe))}" if recipe else None,
        "trials_csv": str(csv_path), "plots": save_plots(study, tune_dir) if plots else {},
        "space": [p.path for p in params], "storage": storage, "study_name": str(tune["study_name"]),
        "recipe": config.get("recipe"), "run_dir": str(tune_dir), "pid": os.getpid(), "host": socket.gethostname(),
        "wall_seconds": round(seconds, 2),
    }
    write_json(results, tune_dir / "results.json")
    return results


def run_search(config: dict, tune_dir: Path | None, run_trial: RunTrial, compose: Compose) -> dict:
    """Search `config["tune"]["space"]` (a new study, or with `tune_dir` the one being resumed);
    returns the search's results.json."""
    optuna = import_optuna()
    start = time.time()
    tune = config["tune"]
    if tune_dir is not None:
        tune_dir = reuse_run_dir(str(tune_dir))
    check_one_process(config["trainer"])
    if int(tune["n_trials"]) < 1:
        raise ConfigError(f"tune.n_trials={tune['n_trials']} must be >= 1 (the study's size, counting finished trials).")
    params = parse_space(tune.get("space"), config)  # a bad space fails before any directory is made
    metric, direction = monitor_of(config["task"]["kind"], tune)
    build_sampler(optuna, tune, config["seed"]), build_pruner(optuna, tune)  # a typo there too
    earlier = float(read_results(tune_dir).get("wall_seconds", 0.0)) if tune_dir else 0.0
    if tune_dir is None:
        tune_dir = create_run_dir(config.get("run_dir"))
        config = {**config, "run_dir": str(tune_dir)}
        write_config(config, tune_dir)
    log.info("Tune directory: %s", tune_dir)
    verbosity = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # transferkit logs one line per trial
    study, storage = open_study(optuna, tune, config["seed"], tune_dir, direction)

    def outputs(status: str, final: bool = False) -> dict:
        return write_outputs(study, config, params, tune_dir, metric, direction, storage, status,
                             earlier + time.time() - start, compose, plots=final)

    try:
        optimize(optuna, study, tune, params, tune_dir, metric, run_trial, outputs)
    except (RunInterrupted, KeyboardInterrupt) as err:
        outputs("interrupted", final=True)
        code = getattr(err, "exit_code", EXIT_SIGNAL[signal.SIGINT])
        raise RunInterrupted(f"the search stopped; resume it with: python -m transferkit tune "
                             f"resume={shlex.quote(str(tune_dir))}", code) from None
    except Exception:
        outputs("failed")
        raise
    finally:
        optuna.logging.set_verbosity(verbosity)
    results = outputs("completed", final=True)
    best = results["best"]
    if best is not None:
        log.info("Best: trial %d, %s %.4f, %s\nRe-run it: %s", best["trial"], metric, best["value"],
                 " ".join(f"{k}={v}" for k, v in best["params"].items()), results["fit_command"])
    log.info("Results: %s", tune_dir / "results.json")
    return results


def optimize(optuna, study, tune: dict, params: list[Param], tune_dir: Path, metric: str, run_trial: RunTrial,
             outputs: Callable) -> None:
    """Run the trials the study still needs to hold `tune.n_trials` finished ones."""
    finished = sum(t.state.name in FINISHED for t in study.trials)
    remaining = int(tune["n_trials"]) - finished
    outputs("running")
    if remaining <= 0:
        log.info("The study already holds %d finished trials (tune.n_trials=%d); raise tune.n_trials to "
                 "search on.", finished, int(tune["n_trials"]))
        return
    log.info("Searching %s over %s: %d trial%s to run (%d of %d finished)", metric,
             ", ".join(p.path for p in params), remaining, "s" if remaining != 1 else "", finished,
             int(tune["n_trials"]))
    study.optimize(make_objective(optuna, list(tune["overrides"]), params, tune_dir, metric, run_trial),
                   n_trials=remaining, timeout=tune.get("timeout"), catch=(TrialFailed,),
                   callbacks=[after_trial(metric, lambda s: outputs("running"))])
