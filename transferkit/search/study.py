"""The Optuna study of a search: SQLite storage, sampler, pruner, and trials that run again after
an interruption (a signal, or a killed process on this machine)."""

from __future__ import annotations

import logging
import os
import socket
from pathlib import Path

from transferkit.errors import ConfigError

log = logging.getLogger("transferkit")

FINISHED = ("COMPLETE", "PRUNED")  # the trial states tune.n_trials counts


def import_optuna():
    try:
        import optuna
    except ImportError:
        raise ConfigError("tune needs Optuna: pip install 'transferkit[tune]' (or pip install optuna).") from None
    return optuna


def build_sampler(optuna, tune: dict, seed: int, offset: int = 0):
    """The sampler of the `tune` group; `tune.seed` (else the run's `seed`) seeds it. `offset` (the trials
    a resumed study holds) starts a new random stream, so a resumed search does not draw the first
    session's values again."""
    seed = int(tune["seed"] if tune.get("seed") is not None else seed) + offset
    match str(tune.get("sampler")):
        case "tpe":
            return optuna.samplers.TPESampler(seed=seed)
        case "random":
            return optuna.samplers.RandomSampler(seed=seed)
        case other:
            raise ConfigError(f"tune.sampler={other!r} is unknown; use tpe or random.")


def build_pruner(optuna, tune: dict):
    match str(tune.get("pruner")):
        case "median":
            return optuna.pruners.MedianPruner(n_startup_trials=int(tune["startup_trials"]),
                                               n_warmup_steps=int(tune["warmup_epochs"]))
        case "none" | "None":
            return optuna.pruners.NopPruner()
        case other:
            raise ConfigError(f"tune.pruner={other!r} is unknown; use median or none.")


def open_study(optuna, tune: dict, seed: int, tune_dir: Path, direction: str):
    """The study in `tune.storage` (default: `<tune_dir>/study.db`), created or loaded; returns it and
    the storage URL."""
    storage = str(tune.get("storage") or f"sqlite:///{tune_dir / 'study.db'}")
    study = optuna.create_study(storage=storage, study_name=str(tune["study_name"]), direction=direction,
                                sampler=build_sampler(optuna, tune, seed), pruner=build_pruner(optuna, tune),
                                load_if_exists=True)
    if study.trials:
        study.sampler = build_sampler(optuna, tune, seed, offset=len(study.trials))
    retry_interrupted(optuna, study)
    return study, storage


def retry_interrupted(optuna, study) -> None:
    """Trials stopped by a signal, or left running by a killed process on this machine, run again
    with their values (once each)."""
    from optuna.trial import TrialState

    retried = {t.user_attrs.get("retry_of") for t in study.trials}
    for trial in study.trials:
        dead = trial.state == TrialState.RUNNING and not process_alive(trial.user_attrs)
        if dead:
            study._storage.set_trial_state_values(trial._trial_id, TrialState.FAIL)
        stopped = trial.state == TrialState.FAIL and trial.user_attrs.get("interrupted")
        if (dead or stopped) and trial.number not in retried and trial.params:
            log.info("Trial %d was interrupted; it runs again with the same values.", trial.number)
            study.enqueue_trial(trial.params, user_attrs={"retry_of": trial.number})


def process_alive(attrs: dict) -> bool:
    if attrs.get("host") != socket.gethostname() or not attrs.get("pid"):
        return True  # another machine's worker: not ours to judge
    try:
        os.kill(int(attrs["pid"]), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    return True


def best_trial(study):
    complete = [t for t in study.trials if t.state.name == "COMPLETE"]
    return study.best_trial if complete else None
