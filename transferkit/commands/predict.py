"""`python -m transferkit predict ckpt_path=... input=FILE_OR_FOLDER [output=preds.csv] [top_k=3] [tta=flip]`.

`ckpt_path` is a checkpoint written by fit, a model written by export (`model.onnx`,
`model.torchscript.pt`), a list of checkpoints or a run directory (a cv run: its folds). One model
without TTA goes through the predict loop shared with exported models (`transferkit.inference.run`);
an ensemble or TTA averages probabilities over members and views (`ensemble_predict`), filling the
same CSV columns (or masks) through the same readers and writers (`transferkit.inference`).
"""

from __future__ import annotations

import logging
import time

import torch
from omegaconf import DictConfig

from transferkit.inference.ensemble import predict_ensemble
from transferkit.inference.images import list_inputs
from transferkit.inference.run import Predictor, exported_predictor, predict_files
from transferkit.inference.spec import InputSpec, is_exported_model
from transferkit.tasks.loading import checkpoint_paths, is_many, load_ensemble, load_task, require
from transferkit.training.rundir import create_run_dir, write_config, write_json
from transferkit.inference.tta import check_tta

log = logging.getLogger("transferkit")


def checkpoint_predictor(task) -> Predictor:
    """A task loaded from a checkpoint, on the GPU when there is one, as the predict loop sees it."""
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    task.to(device)
    spec = InputSpec.from_data_config(task.hparams.data_config)
    kind = "segmentation" if type(task).__name__ == "SegmentationTask" else "classification"
    return Predictor(kind, list(task.class_names), spec.in_chans, spec.eval_transform(),
                     lambda batch: task(batch.to(device)).float().cpu())


def eval_workers(requested) -> int:
    """`data.num_workers` (a number or `auto`) for an inference loader outside a Trainer."""
    from transferkit.data.loader_settings import choose_num_workers, usable_cpus

    return choose_num_workers(requested, on_gpu=torch.cuda.is_available(), cpus=usable_cpus())


def run(cfg: DictConfig) -> dict:
    start = time.time()
    tta = check_tta(cfg.get("tta"))
    source = require(cfg.input, "input", "an image file or a folder of images")
    exported = not is_many(cfg.ckpt_path) and cfg.ckpt_path is not None and is_exported_model(str(cfg.ckpt_path))
    if exported:
        ckpt = require(cfg.ckpt_path, "ckpt_path", "a model.onnx / model.torchscript.pt written by export")
        if tta != "none":
            raise ValueError(f"tta={tta!r} needs the checkpoint; an exported model predicts without TTA (tta=none).")
        ckpts, checkpoint = [ckpt], str(ckpt)
    else:
        ckpts = checkpoint_paths(cfg.ckpt_path)
        checkpoint = str(ckpts[0]) if len(ckpts) == 1 and not is_many(cfg.ckpt_path) else [str(p) for p in ckpts]
    single = exported or (len(ckpts) == 1 and tta == "none")
    if exported:
        model = exported_predictor(ckpts[0])
    elif single:
        model = checkpoint_predictor(load_task(ckpts[0]))
    else:
        model, _ = load_ensemble(ckpts, tta)
        model.to("cuda" if torch.cuda.is_available() else "cpu")
    paths = list_inputs(source)
    run_dir = create_run_dir(cfg.run_dir)
    write_config(cfg, run_dir)
    log.info("Run directory: %s", run_dir)
    options = dict(top_k=int(cfg.top_k), batch_size=int(cfg.data.batch_size), num_workers=eval_workers(cfg.data.num_workers))
    summary = (predict_files(model, paths, run_dir, cfg.output, **options) if single else
               predict_ensemble(model, paths, run_dir, cfg.output, **options))
    results = {"command": "predict", "checkpoint": checkpoint, "tta": tta, "input": str(source), **summary,
               "run_dir": str(run_dir), "wall_seconds": round(time.time() - start, 2)}
    write_json(results, run_dir / "results.json")
    return results
