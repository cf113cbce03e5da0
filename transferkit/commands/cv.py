"""`python -m transferkit cv recipe=... data.num_folds=5`: stratified k-fold cross-validation.

One model per fold, trained on train+val with fold k as its validation split (`data.fold=k`); the
held-out test split is never touched by the folds. Each fold is a fit run of its own in
`<run_dir>/folds/<k>/` (config.yaml, checkpoints, metrics, results.json). The cv run writes
`cv.csv` (one row per fold) and `results.json`: `cv: {folds, mean, std}` over the folds, and
`metrics`, the ensemble of the folds' best checkpoints on the test split.

`cv resume=<run directory>` skips the folds that finished, resumes an interrupted fold from its
`last.ckpt` (or restarts it when it has none) and trains the rest. Folds run one after another;
under DDP each uses every device.
"""

from __future__ import annotations

import csv
import json
import logging
import os
import shlex
import shutil
import time
from pathlib import Path

import numpy as np
from omegaconf import DictConfig, OmegaConf, open_dict

from transferkit.runtime.checkpoint_io import checkpoint_problem
from transferkit.errors import ConfigError
from transferkit.runtime.guards import RunInterrupted, RunStopped
from transferkit.training.rundir import (
    ENV_CV_DIR,
    ENV_RUN_DIR,
    create_run_dir,
    is_ddp_child,
    reuse_run_dir,
    write_config,
    write_json,
)

log = logging.getLogger("transferkit")

PLAN_FILE = "folds.json"  # what each fold does in this session; DDP workers follow it, never the disk


def check_cv(cfg: DictConfig) -> int:
    """The number of folds; the config must ask for a cross-validation this command can run."""
    if cfg.task.kind != "classification":
        raise ConfigError(f"cv splits classification data into stratified folds; task.kind={cfg.task.kind!r} "
                          "has no folds. Use fit, and test/predict with ckpt_path=[...] for an ensemble.")
    folds = cfg.data.get("num_folds")
    if folds is None or int(folds) < 2:
        raise ConfigError(f"data.num_folds={folds!r}: cv needs 2 or more folds, e.g. "
                          "python -m transferkit cv recipe=small_similar data.num_folds=5.")
    if cfg.data.get("fold") is not None:
        raise ConfigError(f"data.fold={cfg.data.fold!r} picks one fold for a fit run; cv trains every fold. "
                          "Drop data.fold (or run fit data.num_folds=... data.fold=...).")
    if cfg.get("ckpt_path"):
        raise ConfigError(f"ckpt_path={cfg.ckpt_path!r}: cv trains each fold from the start; to continue an "
                          "interrupted cv run use python -m transferkit cv resume=<its run directory>.")
    return int(folds)


def fold_action(fold_dir: Path) -> str:
    """What a fold needs: `done` (completed), `resume` (a usable last.ckpt), `restart` or `fresh`."""
    from transferkit.training.resume import read_results

    if not fold_dir.is_dir() or not any(fold_dir.iterdir()):
        return "fresh"
    if read_results(fold_dir).get("status") == "completed":
        return "done"
    last = fold_dir / "checkpoints" / "last.ckpt"
    if (fold_dir / "config.yaml").is_file() and last.is_file() and checkpoint_problem(last) is None:
        return "resume"
    return "restart"


def plan_folds(root: Path, num_folds: int) -> list[str]:
    """Each fold's action, decided once by the main process and written for DDP workers."""
    if is_ddp_child():
        return json.loads((root / PLAN_FILE).read_text())["actions"]
    actions = [fold_action(root / "folds" / str(k)) for k in range(num_folds)]
    write_json({"actions": actions}, root / PLAN_FILE)
    for k, action in enumerate(actions):
        if action != "fresh":
            log.info("cv: fold %d: %s", k, {"done": "finished, skipped", "resume": "resumes from its last.ckpt",
                                             "restart": "stopped before its first checkpoint, restarts"}[action])
    return actions


def fold_config(cfg: DictConfig, k: int, fold_dir: Path, action: str) -> DictConfig:
    """The fit config of fold `k`: the cv config with `data.fold=k`, written into `fold_dir`."""
    os.environ[ENV_RUN_DIR] = str(fold_dir)  # DDP workers open the same fold directory
    if action == "resume":  # with this session's RESUME_KEYS (e.g. trainer.max_epochs), as the other folds
        from transferkit.training.resume import RESUME_KEYS, config_of_resumed_run

        keys = [key for key in RESUME_KEYS[1:] if OmegaConf.select(cfg, key, default=None) is not None]
        resumed = OmegaConf.create(OmegaConf.to_container(cfg, resolve=True))
        with open_dict(resumed):
            resumed.resume = str(fold_dir)
        return config_of_resumed_run(resumed, [f"{key}=" for key in keys])
    if action == "restart" and not is_ddp_child():
        shutil.rmtree(fold_dir)  # it holds no checkpoint: nothing of it can be used
    fold = OmegaConf.create(OmegaConf.to_container(cfg, resolve=True))
    with open_dict(fold):
        fold.data.fold, fold.run_dir, fold.resume, fold.ckpt_path = k, str(fold_dir), None, None
    return fold


def run_fold(cfg: DictConfig, k: int, root: Path, action: str) -> dict:
    from transferkit.training.session import train_and_test
    from transferkit.training.resume import read_results

    fold_dir = root / "folds" / str(k)
    if action == "done":
        return read_results(fold_dir)
    log.info("cv: fold %d of %d (%s)", k, int(cfg.data.num_folds), fold_dir)
    results, *_ = train_and_test(fold_config(cfg, k, fold_dir, action), "fit")
    return results


def fold_row(k: int, results: dict) -> dict:
    """One line of cv.csv: the fold's sizes, epochs and every metric (val, best, test)."""
    data = results.get("data") or {}
    return {"fold": k, "status": results.get("status"), "epochs": results.get("epochs"),
            "train_size": data.get("train_size"), "val_size": data.get("val_size"),
            **{key: float(value) for key, value in sorted((results.get("metrics") or {}).items())},
            "wall_seconds": results.get("wall_seconds"), "best_checkpoint": results.get("best_checkpoint")}


def summarize(rows: list[dict]) -> tuple[dict, dict]:
    """Mean and sample standard deviation (n - 1) over the folds, for every metric all folds have."""
    keys = [k for k in rows[0] if "/" in k and all(isinstance(r.get(k), float) for r in rows)]
    values = {key: np.array([row[key] for row in rows]) for key in keys}
    mean = {key: float(v.mean()) for key, v in values.items()}
    std = {key: float(v.std(ddof=1)) if len(v) > 1 else 0.0 for key, v in values.items()}
    return mean, std


def write_cv_csv(rows: list[dict], path: Path) -> Path:
    fields: list[str] = []
    for row in rows:
        fields += [key for key in row if key not in fields]
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)
    return path


def cv_table(mean: dict, std: dict, ensemble: dict) -> str:
    keys = sorted(k for k in mean if k.startswith(("test/", "best/")))
    width = max((len(k) for k in keys), default=6)
    lines = [f"{'metric':<{width}}  folds (mean ± std)  ensemble", f"{'-' * width}  ------------------  --------"]
    for key in keys:
        both = f"{ensemble[key]:.4f}" if key in ensemble else ""
        lines.append(f"{key:<{width}}  {mean[key]:.4f} ± {std[key]:.4f}     {both}")
    return "\n".join(lines)


def open_cv_run(cfg: DictConfig) -> tuple[Path, dict]:
    """A new cv run directory (or with `resume=` the one being continued); results.json says running."""
    from transferkit.training.resume import read_results, session_record, write_resumed_config

    if is_ddp_child():
        return Path(os.environ[ENV_CV_DIR]), {}
    root = reuse_run_dir(cfg.resume) if cfg.get("resume") else create_run_dir(cfg.run_dir)
    os.environ[ENV_CV_DIR] = str(root)
    previous = read_results(root) if cfg.get("resume") else {}
    session = session_record(root, "cv", previous, {"folds": "finished folds skipped"} if cfg.get("resume") else None)
    if cfg.get("resume"):
        write_resumed_config(cfg, root)  # config.yaml stays the run's own, with this session's RESUME_KEYS
    else:
        write_config(cfg, root)
    write_json(session, root / "results.json")
    log.info("cv run directory: %s", root)
    return root, session


def ensemble_metrics(root: Path, rows: list[dict], cfg: DictConfig) -> tuple[dict, list[str]]:
    """The folds' best checkpoints as one ensemble on the test split (the first fold's data)."""
    from transferkit.training.builders import build_datamodule
    from transferkit.commands.test import test_ensemble

    paths = [Path(str(row["best_checkpoint"])) for row in rows]
    fold_cfg = OmegaConf.load(root / "folds" / "0" / "config.yaml")
    with open_dict(fold_cfg):
        fold_cfg.tta = cfg.get("tta", "none")
    datamodule = build_datamodule(fold_cfg)
    datamodule.scan()
    return test_ensemble(fold_cfg, paths, datamodule, root), [str(p) for p in paths]


def run(cfg: DictConfig) -> dict:
    start = time.time()
    num_folds = check_cv(cfg)
    root, session = open_cv_run(cfg)
    rows: list[dict] = []
    try:
        for k, action in enumerate(plan_folds(root, num_folds)):
            rows.append(fold_row(k, run_fold(cfg, k, root, action)))
    except BaseException as err:
        raise record_cv_stop(err, root, session, start, len(rows)) from None
    mean, std = summarize(rows)
    metrics, members = ensemble_metrics(root, rows, cfg)
    wall = round(time.time() - start + session.get("wall_seconds", 0.0), 2)
    results = {**session, "command": "cv", "status": "completed", "recipe": cfg.get("recipe"),
               "task": cfg.task.kind, "num_folds": num_folds,
               "data": {"root": cfg.data.root, "embedded": None if cfg.data.root else cfg.data.get("embedded"),
                        "train_per_class": cfg.data.get("train_per_class")},
               "cv": {"folds": rows, "mean": mean, "std": std},
               "metrics": metrics, "ensemble": {"members": members, "tta": str(cfg.get("tta", "none"))},
               "wall_seconds": wall, "run_dir": str(root)}
    for key in ("pid", "host"):
        results.pop(key, None)
    if not is_ddp_child():
        write_cv_csv(rows, root / "cv.csv")
        write_json(results, root / "results.json")
        (root / PLAN_FILE).unlink(missing_ok=True)
        log.info("%s", cv_table(mean, std, metrics))
        log.info("cv results: %s", root / "results.json")
    return results


def record_cv_stop(err: BaseException, root: Path, session: dict, start: float, fold: int) -> BaseException:
    """results.json of a cv run that stopped in `fold`; an interruption says how to resume the cv run."""
    stop = err
    if isinstance(err, RunInterrupted):
        what = str(err).splitlines()[0].split(";")[0]
        stop = RunInterrupted(f"fold {fold}: {what}; resume the cv run (finished folds are skipped) with: "
                              f"python -m transferkit cv resume={shlex.quote(str(root))}", err.exit_code)
    status = stop.status if isinstance(stop, RunStopped) else "failed"
    if not is_ddp_child():
        message = str(stop).splitlines()[0] if str(stop) else type(stop).__name__
        record = {**session, "status": status, "stopped_in_fold": fold, "message": message,
                  "wall_seconds": round(time.time() - start + session.get("wall_seconds", 0.0), 2)}
        write_json(record, root / "results.json")
    return stop
