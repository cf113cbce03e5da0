"""Inside a resumed run directory (`fit resume=`, `cv resume=`): results.json across sessions, the
run's own config.yaml with this session's RESUME_KEYS, the same splits, the best score kept.

Which run resumes and with what config is decided in `transferkit.planning.resume`.
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
from omegaconf import OmegaConf, open_dict

from transferkit.errors import ConfigError
from transferkit.planning.spec import RunSpec
from transferkit.runtime.checkpoint_io import checkpoint_problem
from transferkit.training.rundir import write_config

log = logging.getLogger("transferkit")

# What may change on resume: nothing that changes what is trained (`transferkit.planning.resume` checks).
RESUME_KEYS = ("resume", "trainer.max_epochs", "data.num_workers", "trainer.enable_progress_bar",
               "trainer.log_every_n_steps", "trainer.enable_model_summary", "checkpoint.every_minutes", "debug")


def read_results(run_dir: Path) -> dict:
    path = run_dir / "results.json"
    try:
        return json.loads(path.read_text()) if path.is_file() else {}
    except json.JSONDecodeError:
        return {}


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
