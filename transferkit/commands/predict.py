"""`python -m transferkit predict ckpt_path=... input=FILE_OR_FOLDER [output=preds.csv] [top_k=3] [tta=flip]`.

`ckpt_path` is a checkpoint written by fit, a model written by export (`model.onnx`,
`model.torchscript.pt`), a list of checkpoints or a run directory (a cv run: its folds). One predictor
serves them all (`transferkit.inference.predictor`): an ensemble or TTA averages probabilities over
members and views, filling the same CSV columns (or masks) as one model.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

from omegaconf import DictConfig

from transferkit.data.inputs import list_inputs
from transferkit.inference.predictor import load_predictor, predict_files
from transferkit.planning.checkpoint import PredictPlan
from transferkit.training.rundir import create_run_dir, write_config, write_json

log = logging.getLogger("transferkit")


def run(cfg: DictConfig) -> dict:
    start = time.time()
    spec = PredictPlan(cfg).spec  # the config stops here: the rest of the command receives the spec
    predictor = load_predictor(spec.model)
    paths = list_inputs(Path(spec.input))
    run_dir = create_run_dir(spec.run_dir)
    write_config(spec.config, run_dir)
    log.info("Run directory: %s", run_dir)
    summary = predict_files(predictor, paths, run_dir, spec.output, spec.top_k, spec.batch_size, spec.num_workers)
    results = {"command": "predict", "checkpoint": spec.model.recorded, "tta": spec.model.tta, "input": spec.input,
               **summary, "run_dir": str(run_dir), "wall_seconds": round(time.time() - start, 2)}
    write_json(results, run_dir / "results.json")
    return results
