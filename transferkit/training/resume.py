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
from transferkit.runtime.run_paths import read_located
from transferkit.training.rundir import write_config

log = logging.getLogger("transferkit")

# What may change on resume: nothing that changes what is trained (`transferkit.planning.resume` checks).
# data.root, model.weights: the same files at another place (a moved run, another machine); the splits are
# checked to be the same files, the weights file only builds the model before the checkpoint's weights load.
RESUME_KEYS = ("resume", "trainer.max_epochs", "data.num_workers", "trainer.enable_progress_bar",
               "trainer.log_every_n_steps", "trainer.enable_model_summary", "checkpoint.every_minutes",
               "checkpoint.every_steps", "debug",
               "data.root", "model.weights")


def read_results(run_dir: Path) -> dict:
    """results.json, its paths of the run's own files absolute where the run directory is now."""
    path = run_dir / "results.json"
    try:
        return read_located(json.loads(path.read_text()), run_dir) if path.is_file() else {}
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


def check_same_splits(record: dict, run_dir: Path, root: str | None = None) -> None:
    """The resumed run's data splits into the files splits.json records (by their paths under data.root,
    which may have moved: `fit resume=<run> data.root=<new place>`, and their pixel digests where the run
    recorded them), else one line naming the first file that differs."""
    path = run_dir / "splits.json"
    if not path.is_file():
        return
    saved = json.loads(path.read_text())
    old_root = saved.get("root") or OmegaConf.load(run_dir / "config.yaml").data.get("root")
    before, now = under_root(saved, old_root), under_root(json.loads(json.dumps(record, default=str)), root)
    if "digests" not in before:  # a run from before the pixel digests were recorded: its paths are checked
        now.pop("digests", None)
    difference = first_difference(before, now)
    if difference is not None:
        where, was, found = difference
        raise ConfigError(f"resume={run_dir}: the data no longer splits as splits.json records: its {where} was "
                          f"{was!r}, data.root={str(root)!r} gives {found!r} (files added, removed, renamed or "
                          "changed); the run cannot continue on other data. Point data.root= at the folder the "
                          "run trained on (data.root=<its new place> if it moved), or start a new run.")


def under_root(record, root: str | None):
    """A split record with the data root taken out: paths relative to it, so a moved folder compares equal
    (the warnings, sentences that may name the root, are not compared)."""
    prefix = str(root).rstrip("/") + "/" if root else None
    if isinstance(record, dict):
        return {k: under_root(v, root) for k, v in record.items() if k not in ("root", "warnings")}
    if isinstance(record, list):
        return [under_root(v, root) for v in record]
    if prefix and isinstance(record, str) and record.startswith(prefix):
        return record[len(prefix):]
    return record


def first_difference(before, now, where: str = "") -> tuple[str, object, object] | None:
    """Where two records first differ (`splits.train[3][0]`), what it was and what it is."""
    if isinstance(before, dict) and isinstance(now, dict):
        for key in [*before, *(k for k in now if k not in before)]:
            found = first_difference(before.get(key), now.get(key), f"{where}.{key}" if where else str(key))
            if found is not None:
                return found
        return None
    if isinstance(before, list) and isinstance(now, list):
        for i, (a, b) in enumerate(zip(before, now)):
            found = first_difference(a, b, f"{where}[{i}]")
            if found is not None:
                return found
        if len(before) != len(now):
            i = min(len(before), len(now))
            return f"{where}[{i}]", before[i] if i < len(before) else None, now[i] if i < len(now) else None
        return None
    return None if before == now else (where, before, now)


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
