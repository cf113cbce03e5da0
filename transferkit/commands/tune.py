"""`python -m transferkit tune recipe=... tune.n_trials=20`: an Optuna search over `tune.space`.

The tune directory (a run directory) holds `study.db` (every trial, in SQLite), `trials/<n>/` (each
trial a normal fit run, composed through the CLI from this command line plus the sampled values),
`trials.csv`, `results.json`, `best_recipe.yaml` (re-run it: `fit recipe=<tune dir>/best_recipe.yaml`)
and Optuna's history and importance plots. `tune resume=<tune dir>` (or `resume=last`) continues an
interrupted search: finished trials stay, an interrupted one runs again with its values, and new
trials fill the study up to `tune.n_trials`.
"""

from __future__ import annotations

import logging
import os
import shlex
import signal
import socket
import time
from collections.abc import Callable
from pathlib import Path

from omegaconf import DictConfig, OmegaConf, open_dict

from transferkit.training.resume import OUTPUTS, check_not_running, read_results, run_order
from transferkit.errors import ConfigError
from transferkit.training.rundir import create_run_dir, reuse_run_dir, write_config, write_json
from transferkit.search.space import override_key, parse_space, sample, trial_overrides
from transferkit.search.study import FINISHED, best_trial, build_pruner, build_sampler, import_optuna, open_study

log = logging.getLogger("transferkit")

Compose = Callable[[list[str]], DictConfig]  # cli.compose_config
RESUME_KEYS = ("resume", "tune.n_trials", "tune.timeout", "debug", "trainer.enable_progress_bar")


class TrialFailed(Exception):
    """One trial failed (a config the space allowed but the run refused, a diverged loss): the
    search goes on; the study records it as FAIL with the message."""


def find_tune_dir(value: str) -> Path:
    """`resume=`: a tune directory, or `last` for the newest one under outputs/."""
    if str(value) == "last":
        dirs = [p.parent for p in OUTPUTS.glob("*/*/study.db")]
        if not dirs:
            raise FileNotFoundError(f"resume=last: no search (study.db) under {OUTPUTS.resolve()}/; "
                                    "pass resume=<tune directory>.")
        return max(dirs, key=run_order).resolve()
    path = Path(str(value)).expanduser()
    if not (path / "config.yaml").is_file() or read_results(path).get("command") != "tune":
        raise FileNotFoundError(f"resume={str(value)!r} is not a tune directory (no config.yaml and results.json "
                                "of a `tune` run); pass the directory `tune` printed.")
    return path.resolve()


def resumed_config(cfg: DictConfig) -> tuple[DictConfig, Path]:
    """The saved search config, with only RESUME_KEYS taken from this command line."""
    tune_dir = find_tune_dir(cfg.resume)
    check_not_running(read_results(tune_dir), tune_dir)
    saved = OmegaConf.load(tune_dir / "config.yaml")
    for item in cfg.tune.overrides:
        key = override_key(item)
        if key not in RESUME_KEYS:
            raise ConfigError(f"{key} cannot change when resuming the search in {tune_dir}: its trials must "
                              f"share one setup; resume accepts only {list(RESUME_KEYS[1:])}. Start a new search "
                              "to change it.")
        if key == "resume":
            continue
        OmegaConf.update(saved, key, OmegaConf.select(cfg, key), force_add=True)
        if not key.startswith("tune."):  # e.g. debug: the trials get it too
            saved.tune.overrides = [o for o in saved.tune.overrides if override_key(o) != key] + [item]
    return saved, reuse_run_dir(str(tune_dir))


def check_one_process(cfg: DictConfig) -> None:
    trainer = cfg.trainer
    devices = trainer.get("devices")
    if (isinstance(devices, int) and devices > 1 or "ddp" in str(trainer.get("strategy"))
            or int(trainer.get("num_nodes") or 1) > 1):
        raise ConfigError("tune runs its trials in this process, and Lightning's DDP would relaunch the whole "
                          "search in every worker; search on one device (trainer.devices=1), or run trials in "
                          "parallel as separate `tune` processes sharing tune.storage.")


def monitor_of(cfg: DictConfig) -> tuple[str, str]:
    """The metric a trial is scored by and whether larger is better (`maximize`/`minimize`)."""
    from transferkit.training.builders import task_classes

    task = task_classes()[str(cfg.task.kind)]
    metric = str(cfg.tune.metric or task.monitor)
    mode = task.monitor_mode if metric == task.monitor else ("min" if "loss" in metric else "max")
    direction = cfg.tune.direction or ("maximize" if mode == "max" else "minimize")
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


def make_objective(optuna, cfg: DictConfig, params, tune_dir: Path, metric: str, compose: Compose):
    from transferkit.training.session import train_and_test
    from transferkit.search.pruning import PruneOnValidation
    from transferkit.runtime.guards import RunInterrupted

    def objective(trial) -> float:
        overrides = trial_overrides(list(cfg.tune.overrides), params, sample(trial, params))
        run_dir = tune_dir / "trials" / str(trial.number)
        for key, value in {"overrides": overrides, "run_dir": str(run_dir), "host": socket.gethostname(),
                           "pid": os.getpid()}.items():
            trial.set_user_attr(key, value)
        log.info("trial %d: %s", trial.number, " ".join(o for o in overrides if o not in cfg.tune.overrides))
        pruning = PruneOnValidation(trial, metric)
        try:
            train_and_test(compose([*overrides, f"run_dir={run_dir}"]), "fit", callbacks=[pruning])
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


def base_recipe(recipe) -> dict | None:
    """The search's own recipe file as a dict (a name from recipes/ or a path)."""
    from transferkit.config.files import recipe_path

    if not recipe:
        return None
    path = Path(str(recipe)).expanduser() if str(recipe).endswith((".yaml", ".yml")) else recipe_path(str(recipe))
    return OmegaConf.to_container(OmegaConf.load(path))


def write_best_recipe(study, cfg: DictConfig, tune_dir: Path, metric: str, compose: Compose) -> Path | None:
    from transferkit.evaluation.reports.tune_report import recipe_text

    best = best_trial(study)
    if best is None:
        return None
    overrides = list(best.user_attrs["overrides"])
    finished = sum(t.state.name in FINISHED for t in study.trials)
    header = [f"The best of {finished} trials in {tune_dir}: trial {best.number}, {metric} {best.value:.4f}.",
              f"Its run: {best.user_attrs.get('run_dir')}",
              "Re-run it: python -m transferkit fit recipe=<this file> (add key=value overrides as usual)."]
    path = tune_dir / "best_recipe.yaml"
    path.write_text(recipe_text(base_recipe(cfg.get("recipe")), overrides, compose(overrides), header))
    return path


def write_outputs(study, cfg: DictConfig, params, tune_dir: Path, metric: str, direction: str, storage: str,
                  status: str, seconds: float, compose: Compose, plots: bool = True) -> dict:
    """trials.csv, results.json and (at the end of a session) best_recipe.yaml and the two plots."""
    from transferkit.evaluation.reports.tune_report import save_plots, write_trials_csv

    trials = study.trials
    csv_path = write_trials_csv(trials, [p.path for p in params], tune_dir / "trials.csv")
    best = best_trial(study)
    counts = {state: sum(t.state.name == state for t in trials) for state in ("COMPLETE", "PRUNED", "FAIL", "RUNNING")}
    recipe = write_best_recipe(study, cfg, tune_dir, metric, compose) if plots else None
    results = {
        "command": "tune", "status": status, "metric": metric, "direction": direction,
        "n_trials": int(cfg.tune.n_trials), "trials": {k.lower(): v for k, v in counts.items()},
        "best": None if best is None else {"trial": best.number, "value": best.value, "params": best.params,
                                           "run_dir": best.user_attrs.get("run_dir")},
        "best_recipe": str(recipe) if recipe else None,
        "fit_command": f"python -m transferkit fit recipe={shlex.quote(str(recipe))}" if recipe else None,
        "trials_csv": str(csv_path), "plots": save_plots(study, tune_dir) if plots else {},
        "space": [p.path for p in params], "storage": storage, "study_name": str(cfg.tune.study_name),
        "recipe": cfg.get("recipe"), "run_dir": str(tune_dir), "pid": os.getpid(), "host": socket.gethostname(),
        "wall_seconds": round(seconds, 2),
    }
    write_json(results, tune_dir / "results.json")
    return results


def run(cfg: DictConfig, compose: Compose) -> dict:
    """`compose` is cli.compose_config: every trial's config is composed by the CLI layer."""
    from transferkit.runtime.guards import EXIT_SIGNAL, RunInterrupted

    optuna = import_optuna()
    start = time.time()
    cfg, tune_dir = resumed_config(cfg) if cfg.get("resume") else (cfg, None)
    check_one_process(cfg)
    if int(cfg.tune.n_trials) < 1:
        raise ConfigError(f"tune.n_trials={cfg.tune.n_trials} must be >= 1 (the study's size, counting finished trials).")
    params = parse_space(cfg.tune.space, cfg)  # a bad space fails before any directory is made
    metric, direction = monitor_of(cfg)
    build_sampler(optuna, cfg), build_pruner(optuna, cfg)  # a typo there too
    earlier = float(read_results(tune_dir).get("wall_seconds", 0.0)) if tune_dir else 0.0
    if tune_dir is None:
        tune_dir = create_run_dir(cfg.run_dir)
        with open_dict(cfg):
            cfg.run_dir = str(tune_dir)
        write_config(cfg, tune_dir)
    log.info("Tune directory: %s", tune_dir)
    verbosity = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # transferkit logs one line per trial
    study, storage = open_study(optuna, cfg, tune_dir, direction)

    def outputs(status: str, final: bool = False) -> dict:
        return write_outputs(study, cfg, params, tune_dir, metric, direction, storage, status,
                             earlier + time.time() - start, compose, plots=final)

    try:
        finished = sum(t.state.name in FINISHED for t in study.trials)
        remaining = int(cfg.tune.n_trials) - finished
        outputs("running")
        if remaining > 0:
            log.info("Searching %s over %s: %d trial%s to run (%d of %d finished)", metric,
                     ", ".join(p.path for p in params), remaining, "s" if remaining != 1 else "", finished,
                     int(cfg.tune.n_trials))
            study.optimize(make_objective(optuna, cfg, params, tune_dir, metric, compose), n_trials=remaining,
                           timeout=cfg.tune.timeout, catch=(TrialFailed,),
                           callbacks=[after_trial(metric, lambda s: outputs("running"))])
        else:
            log.info("The study already holds %d finished trials (tune.n_trials=%d); raise tune.n_trials to "
                     "search on.", finished, int(cfg.tune.n_trials))
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
