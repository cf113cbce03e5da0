"""Evaluate trained checkpoints on a test split with Lightning's `trainer.test`: `test` (one checkpoint,
or an ensemble / TTA) and cv's ensemble of its folds. An ensemble's loader prepares each sample in
every member's own preprocessing (`transferkit.evaluation.ensemble_views`)."""

from __future__ import annotations

import logging
import time
from pathlib import Path

from transferkit.evaluation.ensemble_views import views_loader
from transferkit.evaluation.reports.run_report import finish_run_report
from transferkit.evaluation.reports.test_outputs import TestOutputsCallback
from transferkit.inference.spec import CheckpointSpec
from transferkit.planning.spec import RunSpec
from transferkit.tasks.loading import load_ensemble
from transferkit.tasks.tta import check_tta
from transferkit.training.builders import build_datamodule, build_trainer
from transferkit.training.rundir import create_run_dir, write_config, write_json
from transferkit.training.console import metrics_table

log = logging.getLogger("transferkit")


def run_test(trainer, model, datamodule, single: bool, spec: RunSpec) -> dict[str, float]:
    """`trainer.test` of one task on the datamodule, or of an `EnsembleTask` on its members' views."""
    if single:
        tested = trainer.test(model, datamodule=datamodule, verbose=False)
    else:
        loader = views_loader(model, datamodule, spec.data.batch_size, spec.data.get("num_workers", 0))
        tested = trainer.test(model, dataloaders=loader, verbose=False)
    return {k: float(v) for row in tested for k, v in row.items()}


def test_checkpoints(spec: RunSpec, checkpoints: CheckpointSpec, model, start: float | None = None) -> dict:
    """`test`: the metrics of `model` (loaded from `checkpoints`) on `spec.data`'s test split, with
    results.json and the run report in a new run directory."""
    start = time.time() if start is None else start
    datamodule = build_datamodule(spec.data, spec.model.input.in_chans)
    datamodule.scan()
    if list(datamodule.class_names) != list(model.class_names):
        raise ValueError(
            f"data.root={spec.data.root!r} has classes {datamodule.class_names} but the checkpoint "
            f"{checkpoints.paths[0]!r} was trained on {model.class_names}; point data.root at matching data."
        )
    first = model if checkpoints.single else model.members[0]
    run_dir = create_run_dir(spec.outputs.run_dir, spec.trainer.num_nodes)
    trainer = build_trainer(spec, run_dir, first.monitor, first.monitor_mode)
    if trainer.is_global_zero:
        log.info("Run directory: %s", run_dir)
        write_config(spec.config, run_dir)
    metrics = run_test(trainer, model, datamodule, checkpoints.single, spec)
    results = {"command": "test", "task": spec.task.kind, "checkpoint": checkpoints.recorded, "tta": checkpoints.tta,
               "data": {"root": spec.data.root, "test_size": datamodule.sizes().get("test", 0)},
               "metrics": metrics, "wall_seconds": round(time.time() - start, 2), "run_dir": str(run_dir)}
    if trainer.is_global_zero:
        write_json(results, run_dir / "results.json")
        log.info("%s", metrics_table(metrics))
        finish_run_report(spec.callbacks.report, trainer, datamodule, run_dir, results)
    return results


def test_ensemble(spec: RunSpec, paths: list[Path], datamodule, run_dir: Path, tta: str | None = "none",
                  report_outputs: TestOutputsCallback | None = None) -> dict:
    """Metrics of the ensemble of `paths` on `datamodule`'s test split (cv: the folds on the held-out test),
    logged under `<run_dir>/ensemble`. `report_outputs`: a fit's collector, which takes the ensemble's test
    outputs, so the run report shows the run's model (finetune=auto's ensemble), not the model tested first."""
    ensemble, _ = load_ensemble(paths, check_tta(tta))
    first = ensemble.members[0]
    trainer = build_trainer(spec, run_dir, first.monitor, first.monitor_mode, log_version="ensemble")
    tested = run_test(trainer, ensemble, datamodule, False, spec)
    collected = next((c.outputs for c in trainer.callbacks if isinstance(c, TestOutputsCallback)), None)
    if report_outputs is not None and collected is not None:
        report_outputs.outputs = collected
    return tested
