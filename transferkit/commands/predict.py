"""`python -m transferkit predict ckpt_path=... input=FILE_OR_FOLDER [output=preds.csv] [top_k=3]`.

`ckpt_path` is a checkpoint written by fit, or a model written by export (`model.onnx`,
`model.torchscript.pt`); both go through the same predict loop (`transferkit.inference.run`).
"""

from __future__ import annotations

import logging
import time

import torch
from omegaconf import DictConfig

from transferkit.inference.images import list_inputs
from transferkit.inference.run import Predictor, exported_predictor, predict_files
from transferkit.inference.spec import InputSpec, is_exported_model
from transferkit.loading import load_task, require
from transferkit.rundir import create_run_dir, write_config, write_json

log = logging.getLogger("transferkit")


def checkpoint_predictor(task) -> Predictor:
    """A task loaded from a checkpoint, on the GPU when there is one, as the predict loop sees it."""
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    task.to(device)
    spec = InputSpec.from_data_config(task.hparams.data_config)
    kind = "segmentation" if type(task).__name__ == "SegmentationTask" else "classification"
    return Predictor(kind, list(task.class_names), spec.in_chans, spec.eval_transform(),
                     lambda batch: task(batch.to(device)).float().cpu())


def run(cfg: DictConfig) -> dict:
    start = time.time()
    ckpt = require(cfg.ckpt_path, "ckpt_path", "a checkpoint written by fit, or a model.onnx / "
                   "model.torchscript.pt written by export")
    source = require(cfg.input, "input", "an image file or a folder of images")
    predictor = exported_predictor(ckpt) if is_exported_model(ckpt) else checkpoint_predictor(load_task(ckpt))
    paths = list_inputs(source)
    run_dir = create_run_dir(cfg.run_dir)
    write_config(cfg, run_dir)
    log.info("Run directory: %s", run_dir)
    summary = predict_files(predictor, paths, run_dir, cfg.output, top_k=int(cfg.top_k),
                            batch_size=int(cfg.data.batch_size), num_workers=int(cfg.data.num_workers))
    results = {"command": "predict", "checkpoint": str(ckpt), "input": str(source), **summary,
               "run_dir": str(run_dir), "wall_seconds": round(time.time() - start, 2)}
    write_json(results, run_dir / "results.json")
    return results
