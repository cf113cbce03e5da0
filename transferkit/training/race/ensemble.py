"""`finetune.combine=ensemble`: after the race, the run's model is the ensemble of the finishers the
validation split cannot tell from the winner (their probabilities averaged,
`transferkit.tasks.ensemble.EnsembleTask`), not the winner alone.

A finisher is a member when its validation score is within `WITHIN_SE` paired standard errors of the
winner's (the final verdict's `behind` and `se_behind`, a bootstrap over validation images). Why: on the
benchmark's rows the validation split often cannot tell the finishers apart (a few hundred crops,
correlated within a photo region), and picking one on it missed the best strategy by up to 6 points;
averaging every finisher instead lost 4.6 points where one candidate was far behind (fonts). Twelve
membership rules were replayed on the nine design rows (docs, "The race"); this one had the smallest
worst case. The finishers are trained anyway (no plan of this version cuts), so the ensemble costs no
training; it costs one forward pass per member at inference.

On disk: each member's best checkpoint in `checkpoints/members/<name>.ckpt` (the winner's is a copy of
`checkpoints/best.ckpt`, which stays the best single model) and `checkpoints/ensemble.json` naming
them; `ckpt_path=<run dir>` in `test`, `predict` and `serve` loads the ensemble
(`transferkit.tasks.loading.run_checkpoints`). Each member keeps its own temperature
(`calibration=temperature`), fitted on the validation split as for any run.
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

from transferkit.evaluation.reports.test_outputs import TestOutputsCallback
from transferkit.planning.spec import RunSpec
from transferkit.tasks.loading import ENSEMBLE_FILE, load_ensemble, load_task
from transferkit.training.calibrate import calibrate_members
from transferkit.training.evaluate import test_ensemble
from transferkit.training.rundir import write_json
from transferkit.training.thresholds import tune_ensemble_thresholds

log = logging.getLogger("transferkit")

MEMBERS_DIR = "checkpoints/members"
WITHIN_SE = 2.0  # a finisher joins when it is at most this many paired SEs behind the winner on validation


def is_member(name: str, winner: str, verdict: dict | None) -> bool:
    """The winner, and every finisher the validation images cannot tell from it: behind by at most
    `WITHIN_SE` paired standard errors of the difference."""
    if name == winner:
        return True
    if not verdict:
        return False
    behind, se = float(verdict.get("behind", 0.0)), float(verdict.get("se_behind", 0.0))
    return behind <= 0.0 or (se > 0 and behind <= WITHIN_SE * se)


def finisher_checkpoints(auto: dict, run_dir: Path) -> dict[str, Path]:
    """The members (`is_member`) among the candidates that trained to the race's last epoch and whose
    best checkpoint is on disk, in the race's order: the winner's is the run's `checkpoints/best.ckpt`
    (adopted), the others' are still in `race/<name>/checkpoints/`."""
    end = auto["rungs"][-1]["end"] if auto.get("rungs") else None
    found = {}
    for entry in auto["candidates"]:
        if not entry["rungs"] or entry["rungs"][-1]["epochs"] != end:
            continue
        if not is_member(entry["name"], auto["winner"], entry["rungs"][-1].get("verdict")):
            continue
        name = entry["name"]
        path = (run_dir / "checkpoints" / "best.ckpt" if name == auto["winner"]
                else run_dir / "race" / name / "checkpoints" / "best.ckpt")
        if not path.is_file():  # a finished race resumed to train its winner on: gathered before
            path = run_dir / MEMBERS_DIR / f"{name}.ckpt"
        if path.is_file():
            found[name] = path
    return found


def gather_members(found: dict[str, Path], run_dir: Path) -> list[Path]:
    """Rank 0: the members' checkpoints into `checkpoints/members/`, and `checkpoints/ensemble.json`."""
    target = run_dir / MEMBERS_DIR
    target.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, source in found.items():
        path = target / f"{name}.ckpt"
        if source == path:
            pass  # gathered by an earlier session
        elif source.parent == run_dir / "checkpoints":
            shutil.copy2(source, path)  # the winner's best.ckpt stays the run's best single model
        else:
            shutil.move(source, path)
            shutil.rmtree(source.parent, ignore_errors=True)  # its last.ckpt: nothing resumes a finished race
        paths.append(path)
    write_json({"members": [str(p.relative_to(run_dir)) for p in paths], "names": list(found),
                "combine": "mean of the members' probabilities"}, run_dir / ENSEMBLE_FILE)
    return paths


def finish_ensemble(spec: RunSpec, trainer, datamodule, run_dir: Path, results: dict, has_test: bool) -> dict:
    """The run's model becomes the ensemble of the race's finishers: members gathered, each calibrated
    (`calibration=temperature`), and the ensemble tested. Returns what `results` gains: the ensemble's
    test metrics replace the winner's (kept under `auto.winner_metrics`)."""
    auto = results["auto"]
    found = finisher_checkpoints(auto, run_dir) if trainer.is_global_zero else {}
    names = list(trainer.strategy.broadcast(list(found), src=0))
    if trainer.is_global_zero:  # finishers left out keep nothing (their logs stay in race/<name>/logs)
        for entry in auto["candidates"]:
            if entry["name"] not in names and entry["name"] != auto["winner"]:
                shutil.rmtree(run_dir / "race" / entry["name"] / "checkpoints", ignore_errors=True)
    if len(names) < 2:
        log.info("finetune.combine=ensemble: no finisher is within %g paired SE of %s on validation; the "
                 "run's model is the winner alone.", WITHIN_SE, auto["winner"])
        return {"auto": {**auto, "combine": "ensemble", "ensemble": names or [auto["winner"]]}}
    paths = gather_members(found, run_dir) if trainer.is_global_zero else []
    trainer.strategy.barrier()
    paths = [run_dir / MEMBERS_DIR / f"{name}.ckpt" for name in names]
    update: dict = {}
    if spec.calibration == "temperature" and trainer.is_global_zero:
        tasks = [load_task(p) for p in paths]
        update["calibration"] = calibrate_members(tasks, names, paths, datamodule, trainer.strategy.root_device,
                                                  has_test)
        del tasks
    if spec.task.kind == "multilabel" and trainer.is_global_zero:  # no temperature: its own thresholds
        update["thresholds"] = ensemble_thresholds(spec, paths, datamodule, run_dir, has_test,
                                                   trainer.strategy.root_device)
    trainer.strategy.barrier()
    collector = next((c for c in trainer.callbacks if isinstance(c, TestOutputsCallback)), None)
    tested = test_ensemble(spec, paths, datamodule, run_dir, report_outputs=collector)  # report.html: the ensemble
    metrics = {k: v for k, v in results["metrics"].items() if not k.startswith("test/")}
    metrics.update(tested)
    for record in ("calibration", "thresholds"):
        if record in update:
            metrics.update(update[record].pop("metrics"))
    if "thresholds" in update:
        metrics.pop("test/f1", None)  # the same macro F1 at 0.5 as test/f1_macro_at_0.5
    winner_metrics = {k: v for k, v in results["metrics"].items() if k.startswith("test/")}
    headline = "test/map" if spec.task.kind == "multilabel" else "test/acc"
    log.info("finetune.combine=ensemble: the run's model averages %s; %s %.4f (the winner %s alone: %.4f)",
             ", ".join(names), headline, metrics.get(headline, float("nan")), auto["winner"],
             winner_metrics.get(headline, float("nan")))
    winner_thresholds = {"winner_thresholds": results["thresholds"]} if results.get("thresholds") else {}
    return {**update, "metrics": metrics,
            "ensemble": {"members": [str(p) for p in paths], "names": names},
            "auto": {**auto, "combine": "ensemble", "ensemble": names, "winner_metrics": winner_metrics,
                     **winner_thresholds}}


def ensemble_thresholds(spec: RunSpec, paths: list[Path], datamodule, run_dir: Path, has_test: bool,
                        device) -> dict:
    """Rank 0, multi-label: the ensemble's per-class thresholds, tuned (max F1) on its own averaged
    validation probabilities as a single run's are on its own, written into `checkpoints/ensemble.json`
    (`thresholds`, read by `load_ensemble` for `ckpt_path=<run dir>`). Returns results.json's record."""
    ensemble, _ = load_ensemble(paths)
    record = tune_ensemble_thresholds(ensemble.to(device), datamodule, spec.data.batch_size,
                                      spec.data.get("num_workers", 0), has_test)
    saved = json.loads((run_dir / ENSEMBLE_FILE).read_text())
    write_json({**saved, "thresholds": [float(t) for t in record.pop("values")]}, run_dir / ENSEMBLE_FILE)
    return {**record, "tuned_for": "ensemble", "checkpoints": [str(run_dir / ENSEMBLE_FILE)]}

