"""`fit resume=<run directory>` (or `resume=last`): continue a run in place from its `last.ckpt`.

The one deliberate exception to "a run directory is never reused". The run keeps its own
`config.yaml`; only keys that do not change what is trained may be given again (`RESUME_KEYS`).
A finished `finetune=auto` race continues its winner; a race stopped mid-way continues the race
(`commands.race_progress`).
Metrics are appended (rows past the checkpoint's step are dropped first), results.json updated.
"""

from __future__ import annotations

import json
import logging
import os
import socket
from datetime import datetime
from pathlib import Path

import pytorch_lightning as pl
import torch
from omegaconf import DictConfig, OmegaConf, open_dict

from transferkit.runtime.checkpoint_io import checkpoint_problem, describe_bad_checkpoint
from transferkit.errors import ConfigError
from transferkit.runtime.interval_checkpoint import newer_mid_epoch
from transferkit.planning.spec import RunSpec
from transferkit.training.race.rules import RACE_PROGRESS
from transferkit.training.rundir import write_config

log = logging.getLogger("transferkit")

# What may change on resume: nothing that changes what is trained.
RESUME_KEYS = ("resume", "trainer.max_epochs", "data.num_workers", "trainer.enable_progress_bar",
               "trainer.log_every_n_steps", "trainer.enable_model_summary", "checkpoint.every_minutes", "debug")
OUTPUTS = Path("outputs")


def read_results(run_dir: Path) -> dict:
    path = run_dir / "results.json"
    try:
        return json.loads(path.read_text()) if path.is_file() else {}
    except json.JSONDecodeError:
        return {}


def run_order(run_dir: Path) -> tuple[str, str, int]:
    """outputs/<date>/<HH-MM-SS>[-N]: the order runs were started in."""
    parts = run_dir.name.split("-")
    n = int(parts[3]) if len(parts) > 3 and parts[3].isdigit() else 0
    return run_dir.parent.name, "-".join(parts[:3]), n


def is_fit_run(run_dir: Path) -> bool:
    command = read_results(run_dir).get("command")
    return command == "fit" or command is None and (run_dir / "checkpoints").is_dir()


def is_run_of(run_dir: Path, command: str) -> bool:
    return is_fit_run(run_dir) if command == "fit" else read_results(run_dir).get("command") == command


def find_run(value: str, base: Path = OUTPUTS, command: str = "fit") -> Path:
    """The run directory `resume=` names: a path, or `last` for the newest `command` run under `base`."""
    if str(value) == "last":
        runs = [p.parent for p in base.glob("*/*/config.yaml") if is_run_of(p.parent, command)]
        if not runs:
            raise FileNotFoundError(f"resume=last: no {command} run under {base.resolve()}/ (runs live in "
                                    "outputs/<date>/<time>/); pass resume=<run directory> instead.")
        return max(runs, key=run_order).resolve()
    path = Path(str(value)).expanduser()
    if not path.is_dir():
        raise FileNotFoundError(f"resume={str(value)!r} is not a run directory; pass resume=<run directory> "
                                "(outputs/<date>/<time>) or resume=last.")
    if not (path / "config.yaml").is_file():
        raise FileNotFoundError(f"resume={str(value)!r} holds no config.yaml, so it is not a run directory "
                                "(or the run died before it started); start a new run instead.")
    return path.resolve()


def check_overrides(overrides: list[str], run_dir: Path) -> list[str]:
    """The keys given on the command line; any outside RESUME_KEYS is refused."""
    keys = [item.split("=", 1)[0].lstrip("+~") for item in overrides]
    for key in keys:
        if key not in RESUME_KEYS:
            raise ConfigError(f"{key} cannot change when resuming {run_dir} (it changes what is trained); "
                              f"resume keeps the run's config.yaml and accepts only {list(RESUME_KEYS[1:])}. "
                              "Start a new run to change it.")
    return keys


def check_not_running(results: dict, run_dir: Path) -> None:
    pid = results.get("pid")
    if results.get("status") != "running" or not pid or pid == os.getpid():
        return
    if results.get("host") != socket.gethostname():
        return
    try:
        os.kill(int(pid), 0)  # PermissionError: it exists, run by another user
    except ProcessLookupError:
        return
    except PermissionError:
        pass
    raise ConfigError(f"resume={run_dir}: the run is still going (pid {pid}); stop it first "
                      f"(kill -TERM {pid} saves its last checkpoint), then resume.")


def check_checkpoint(run_dir: Path) -> Path:
    """The checkpoint to continue from: `last.ckpt` (epoch end or signal), or the mid-epoch one
    (`checkpoint.every_minutes`) when that is whole and from a later step."""
    last = run_dir / "checkpoints" / "last.ckpt"
    mid = newer_mid_epoch(run_dir, last)
    if mid is not None:
        return mid
    if not last.exists():
        raise FileNotFoundError(f"resume={run_dir}: there is no checkpoints/last.ckpt (the run stopped before its "
                                "first epoch ended), so nothing can resume; start the run again.")
    problem = checkpoint_problem(last)
    if problem:
        raise ValueError(f"resume: {describe_bad_checkpoint(last, problem, last.with_name('best.ckpt'))}")
    return last


def check_race_resumable(saved: DictConfig, cfg: DictConfig, keys: list[str], run_dir: Path) -> None:
    """A `finetune=auto` run stopped mid-race resumes the race itself, as it was planned."""
    if not (run_dir / RACE_PROGRESS).is_file():
        raise FileNotFoundError(f"resume={run_dir}: this finetune=auto run stopped before its race began (there "
                                f"is no {RACE_PROGRESS}), so nothing can resume; start the run again.")
    if "trainer.max_epochs" in keys and int(cfg.trainer.max_epochs) != int(saved.trainer.max_epochs):
        raise ConfigError(f"trainer.max_epochs cannot change while resuming {run_dir} mid-race: its cuts were planned "
                          f"for trainer.max_epochs={saved.trainer.max_epochs}. Resume the race as it was, then "
                          "resume again with a larger trainer.max_epochs to train its winner longer.")


def race_winner_config(saved: DictConfig, results: dict, run_dir: Path) -> DictConfig:
    """A finished `finetune=auto` run continues as its winner (finetune group and augmentation)."""
    from transferkit.training.race.legs import candidate_config
    from transferkit.config.files import load_group_option
    from transferkit.training.race.rules import build_candidates, explicit_keys

    winner = (results.get("auto") or {}).get("winner")
    explicit = explicit_keys(OmegaConf.to_container(saved.finetune, resolve=True),
                             load_group_option("finetune", "auto"))
    candidates = {c.name: c for c in build_candidates(explicit, use_weights=True, with_scratch=True)}
    if winner not in candidates:
        raise ConfigError(f"resume={run_dir}: results.json names the race winner {winner!r}, which is not a "
                          f"candidate of this version ({sorted(candidates)}); start a new run.")
    log.info("Resuming the winner of the finetune=auto race: %s", winner)
    return OmegaConf.create(OmegaConf.to_container(candidate_config(saved, candidates[winner]), resolve=True))


def config_of_resumed_run(cfg: DictConfig, overrides: list[str]) -> DictConfig:
    """The config to continue `cfg.resume` with: its own config.yaml plus the RESUME_KEYS given."""
    from transferkit.training.rundir import ENV_RUN_DIR, is_ddp_child

    child = is_ddp_child()  # a DDP worker continues the run its parent resolved
    run_dir = Path(os.environ[ENV_RUN_DIR]) if child else find_run(str(cfg.resume))
    keys = check_overrides(overrides, run_dir)
    results = read_results(run_dir)
    if results.get("command") not in (None, "fit"):
        again = " (python -m transferkit cv resume=...)" if results["command"] == "cv" else ""
        raise ConfigError(f"resume={run_dir}: that is a {results['command']!r} run; fit resume continues fit "
                          f"runs. Resume it with its own command{again}.")
    if not child:
        check_not_running(results, run_dir)
    saved = OmegaConf.load(run_dir / "config.yaml")
    last: Path | None = None
    if saved.finetune.get("strategy") == "auto" and not (results.get("auto") or {}).get("winner"):
        check_race_resumable(saved, cfg, keys, run_dir)  # each candidate continues from its own checkpoint
    else:
        last = check_checkpoint(run_dir)
        if saved.finetune.get("strategy") == "auto":
            saved = race_winner_config(saved, results, run_dir)
    with open_dict(saved):
        for key in keys:
            OmegaConf.update(saved, key, OmegaConf.select(cfg, key), force_add=True)
        saved.resume, saved.run_dir, saved.ckpt_path = str(run_dir), str(run_dir), str(last) if last else None
    log.info("Resuming %s from %s", run_dir, last or f"the race record {run_dir / RACE_PROGRESS}")
    return saved


def config_of_resumed_cv(cfg: DictConfig, overrides: list[str]) -> DictConfig:
    """`cv resume=<cv run directory>`: its own config.yaml plus the RESUME_KEYS given; the cv command
    skips the finished folds and resumes an interrupted one from its last.ckpt."""
    from transferkit.training.rundir import ENV_CV_DIR, is_ddp_child

    child = is_ddp_child()
    run_dir = Path(os.environ[ENV_CV_DIR]) if child else find_run(str(cfg.resume), command="cv")
    keys = check_overrides(overrides, run_dir)
    results = read_results(run_dir)
    if results.get("command") != "cv":
        raise ConfigError(f"resume={run_dir}: that is not a cv run (its results.json says command "
                          f"{results.get('command')!r}); continue a fit run with python -m transferkit fit resume=...")
    if not child:
        check_not_running(results, run_dir)
    saved = OmegaConf.load(run_dir / "config.yaml")
    with open_dict(saved):
        for key in keys:
            OmegaConf.update(saved, key, OmegaConf.select(cfg, key), force_add=True)
        saved.resume, saved.run_dir = str(run_dir), str(run_dir)
    log.info("Resuming the cv run %s", run_dir)
    return saved


# -- inside the resumed run ---------------------------------------------------------------------
def write_resumed_config(config: dict, run_dir: Path) -> None:
    """config.yaml stays the run's own; only the RESUME_KEYS take this session's values (from `config`,
    the planned run's composed config)."""
    saved = OmegaConf.load(run_dir / "config.yaml")
    given = OmegaConf.create(config)
    with open_dict(saved):
        for key in RESUME_KEYS[1:]:
            OmegaConf.update(saved, key, OmegaConf.select(given, key), force_add=True)
    write_config(OmegaConf.to_container(saved), run_dir)


def check_same_splits(record: dict, run_dir: Path) -> None:
    path = run_dir / "splits.json"
    if path.is_file() and json.loads(path.read_text()) != json.loads(json.dumps(record, default=str)):
        raise ConfigError(f"resume={run_dir}: the data no longer splits as splits.json records (files were "
                          "added, removed or renamed under data.root); the run cannot continue on other data. "
                          "Start a new run.")


def session_record(run_dir: Path, command: str, previous: dict, resumed_from: dict | None) -> dict:
    """results.json while the run is going: status running, who runs it, and what came before."""
    now = datetime.now().isoformat(timespec="seconds")
    kept = carried_over(previous)
    if resumed_from is not None:
        kept["resumes"] = [*kept.get("resumes", []), {"at": now, **resumed_from}]
    return {"command": command, "status": "running", "run_dir": str(run_dir), "started": now, **kept,
            "pid": os.getpid(), "host": socket.gethostname()}


def carried_over(previous: dict) -> dict:
    """What a resumed run keeps from its results.json: the race record and advice, when it started,
    its sessions, and the seconds they took (`wall_seconds` counts every session)."""
    return {k: previous[k] for k in ("auto", "advice", "started", "resumes", "wall_seconds") if k in previous}


class KeepBestScore(pl.Callback):
    """A race winner's checkpoints were written in race/<name>/, so Lightning does not reload their
    best score into this directory's ModelCheckpoint; take it from best.ckpt itself, so that
    best.ckpt is only replaced by a better model."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        best = trainer.checkpoint_callback
        if best is None or best.best_model_score is not None or checkpoint_problem(self.path):
            return
        states = torch.load(self.path, map_location="cpu", mmap=True, weights_only=True).get("callbacks", {})
        scores = [state["best_model_score"] for key, state in states.items()
                  if key.startswith("ModelCheckpoint") and f"'monitor': {best.monitor!r}" in key
                  and state.get("best_model_score") is not None]
        if scores:
            best.best_model_score = best.kth_value = scores[0].detach().clone()
            best.best_model_path = best.kth_best_model_path = str(self.path)
            best.best_k_models = {str(self.path): best.best_model_score}


def resume_callbacks(spec: RunSpec, run_dir: Path) -> list[pl.Callback]:
    return [KeepBestScore(run_dir / "checkpoints" / "best.ckpt")] if spec.outputs.resume else []
