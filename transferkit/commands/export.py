"""`python -m transferkit export ckpt_path=... [format=onnx|torchscript|openvino] [export.quantize=int8]
[input=...]`: write the model as `model.onnx`, `model.torchscript.pt`, `model.xml` (+ `.bin`) or, INT8,
`model.int8.onnx` / `model.int8.xml`, plus `model.meta.json`, kept only if it passes its check."""

from __future__ import annotations

import logging
import time

from omegaconf import DictConfig

from transferkit.exporting.run import ParityError, export_model, failure_message
from transferkit.inference.exported import ExportedModel, meta_path
from transferkit.planning.checkpoint import export_spec, parity_samples
from transferkit.tasks.loading import load_task
from transferkit.training.rundir import create_run_dir, write_config, write_json

log = logging.getLogger("transferkit")

__all__ = ["ParityError", "run"]


def run(cfg: DictConfig) -> dict:
    start = time.time()
    spec = export_spec(cfg)
    task = load_task(spec.checkpoint)
    samples, calibration, choice = parity_samples(cfg, spec, task)
    run_dir = create_run_dir(spec.run_dir)
    write_config(spec.config, run_dir)
    log.info("Run directory: %s", run_dir)
    results, meta = export_model(spec, task, samples, run_dir, lambda path, meta: ExportedModel(path, meta),
                                 calibration, choice)
    if meta is None:
        write_json({**results, "wall_seconds": round(time.time() - start, 2)}, run_dir / "results.json")
        raise ParityError(failure_message(spec.format, results, run_dir))
    model = run_dir / spec.file_name
    write_json(meta, meta_path(model))
    results.update(model=str(model), meta=str(meta_path(model)), wall_seconds=round(time.time() - start, 2))
    write_json(results, run_dir / "results.json")
    log.info("Wrote %s and %s", model, meta_path(model).name)
    return results
