"""The cv run: one fit run per fold, `cv.csv`, mean and std over the folds, the folds' ensemble on test.

Each fold is a fit run of its own in `<run_dir>/folds/<k>/` (config.yaml, checkpoints, metrics,
results.json; `audit_outputs.npz`, its held-out probabilities for `audit cv=<cv run>`). The cv run
writes `cv.csv` (one row per fold) and `results.json`: `cv: {folds, mean, std}` over the folds, and
`metrics`, the ensemble of the folds' best checkpoints on the test split. A resumed cv run skips the
folds that finished, resumes an interrupted fold from its `last.ckpt` (or restarts it when it has
none) and trains the rest. Folds run one after another; under DDP each uses every device. Planning
each fold is the caller's (`transferkit.planning.cv.plan_fold`).
"""

from __future__ import annotations

import csv
import json
import logging
import os
import shlex
import shutil
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from transferkit.evaluation.audit.fold_outputs import save_fold_outputs
from transferkit.planning.spec import RunSpec
from transferkit.runtime.checkpoint_io import checkpoint_problem
from transferkit.runtime.guards import RunInterrupted, RunStopped
from transferkit.runtime.run_paths import portable
from transferkit.training.builders import build_datamodule
from transferkit.training.evaluate import test_ensemble
from transferkit.training.resume import read_results, session_record, write_resumed_config
from transferkit.training.rundir import (ENV_CV_DIR, ENV_RUN_DIR, create_run_dir, is_ddp_child, reuse_run_dir,
                                         write_config, write_json)
from transferkit.training.session import train_and_test

log = logging.getLogger("transferkit")

PLAN_FILE = "folds.json"  # what each fold does in this session; DDP workers follow it, never the disk
# (fold, its directory, its action) -> the fold's planned spec and scanned datamodule
FoldPlanner = Callable[[int, Path, str], tuple[RunSpec, object]]


def fold_action(fold_dir: Path) -> str:
    """What a fold needs: `done` (completed), `resume` (a usable last.ckpt), `restart` or `fresh`."""
    if not fold_dir.is_dir() or not any(fold_dir.iterdir()):
        return "fresh"
    if read_results(fold_dir).get("status") == "completed":
        return "done"
    last = fold_dir / "checkpoints" / "last.ckpt"
    if (fold_dir / "config.yaml").is_file() and last.is_file() and checkpoint_problem(last) is None:
        return "resume"
    return "restart"


def fold_actions(root: Path, num_folds: int) -> list[str]:
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


def run_fold(k: int, num_folds: int, root: Path, action: str, plan_fold: FoldPlanner) -> dict:
    """Fold `k` as a fit run in `<root>/folds/<k>` (a finished one: its results.json)."""
    fold_dir = root / "folds" / str(k)
    if action == "done":
        return read_results(fold_dir)
    log.info("cv: fold %d of %d (%s)", k, num_folds, fold_dir)
    os.environ[ENV_RUN_DIR] = str(fold_dir)  # DDP workers open the same fold directory
    if action == "restart" and not is_ddp_child():
        shutil.rmtree(fold_dir)  # it holds no checkpoint: nothing of it can be used
    spec, datamodule = plan_fold(k, fold_dir, action)
    results, trainer, task, datamodule, _ = train_and_test(spec, datamodule)
    if trainer.is_global_zero and spec.task.kind == "classification":  # for `audit cv=<this run>`
        save_fold_outputs(task, datamodule, fold_dir, spec.data.batch_size)
    return results


def fold_row(k: int, results: dict) -> dict:
    """One line of cv.csv: the fold's sizes, epochs and every metric (val, best, test)."""
    data = results.get("data") or {}
    return {"fold": k, "status": results.get("status"), "task": results.get("task"), "epochs": results.get("epochs"),
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
    """cv.csv: one row per fold; its best_checkpoint relative to the cv run (`runtime.run_paths`)."""
    rows = portable(rows, path.parent)
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


def open_cv_run(spec: RunSpec, config: dict) -> tuple[Path, dict]:
    """A new cv run directory (or with `resume=` the one being continued); results.json says running.
    `config` is the cv run's composed config, its config.yaml."""
    if is_ddp_child():
        return Path(os.environ[ENV_CV_DIR]), {}
    resume = spec.outputs.resume
    root = reuse_run_dir(resume) if resume else create_run_dir(spec.outputs.run_dir)
    os.environ[ENV_CV_DIR] = str(root)
    previous = read_results(root) if resume else {}
    session = session_record(root, "cv", previous, {"folds": "finished folds skipped"} if resume else None)
    if resume:
        write_resumed_config(config, root)  # config.yaml stays the run's own, with this session's RESUME_KEYS
    else:
        write_config(config, root)
    write_json(session, root / "results.json")
    log.info("cv run directory: %s", root)
    return root, session


def ensemble_metrics(spec: RunSpec, root: Path, rows: list[dict], tta: str | None) -> tuple[dict, list[str]]:
    """The folds' best checkpoints as one ensemble on the test split (the first fold's data)."""
    paths = [Path(str(row["best_checkpoint"])) for row in rows]
    first = spec.for_fold(0, str(root / "folds" / "0"))
    datamodule = build_datamodule(first.data, first.model.input.in_chans)
    datamodule.scan()
    return test_ensemble(first, paths, datamodule, root, tta), [str(p) for p in paths]


def run_cv(spec: RunSpec, config: dict, num_folds: int, tta: str | None, plan_fold: FoldPlanner) -> dict:
    """Train every fold (`plan_fold` plans each), then cv.csv and results.json; returns the results.

    `spec` is the cv run's own (model, weights and input format planned, no data scanned); `config`
    its composed config (config.yaml); `tta` the ensemble test's test-time augmentation.
    """
    start = time.time()
    root, session = open_cv_run(spec, config)
    rows: list[dict] = []
    try:
        for k, action in enumerate(fold_actions(root, num_folds)):
            rows.append(fold_row(k, run_fold(k, num_folds, root, action, plan_fold)))
    except BaseException as err:
        raise record_cv_stop(err, root, session, start, len(rows)) from None
    mean, std = summarize(rows)
    metrics, members = ensemble_metrics(spec, root, rows, tta)
    wall = round(time.time() - start + session.get("wall_seconds", 0.0), 2)
    results = {**session, "command": "cv", "status": "completed", "recipe": spec.recipe,
               "task": rows[0].get("task") or spec.task.kind, "num_folds": num_folds,  # a fold's: multilabel is found by its scan
               "data": {"root": spec.data.root, "embedded": spec.data.embedded,
                        "train_per_class": spec.data.get("train_per_class")},
               "cv": {"folds": rows, "mean": mean, "std": std},
               "metrics": metrics, "ensemble": {"members": members, "tta": str(tta)},
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
