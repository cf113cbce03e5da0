"""`python -m transferkit advise ...`: measure size and similarity, place the data in the matrix.

Extracts frozen backbone features of the training images (deterministic eval transform), scores
them (k-NN, linear probe, LogME against a random-init twin; see `transferkit.evaluation.measure`), logs the
quadrant and recipe, and writes `advice.json` and `advice.png` into the run directory.
`finetune.strategy=auto` in `fit` makes the same measurement through planning.
"""

from __future__ import annotations

import logging

from omegaconf import DictConfig

from transferkit.evaluation.advise import advice_record, report_advice
from transferkit.evaluation.measure import measure_datamodule
from transferkit.planning.plan import plan_spec
from transferkit.planning.race import plan_race
from transferkit.training.builders import build_datamodule
from transferkit.training.rundir import create_run_dir, write_config, write_json

log = logging.getLogger("transferkit")


def run(cfg: DictConfig) -> dict:
    spec = plan_spec(cfg, "advise")
    datamodule = build_datamodule(spec.data, spec.model.input.in_chans)
    advice = measure_datamodule(spec, datamodule)
    run_dir = create_run_dir(spec.outputs.run_dir)
    write_config(spec.config, run_dir)
    race = plan_race(spec.finetune.options, advice.to_dict(), int(spec.trainer.get("max_epochs"))).to_dict()
    record = advice_record(advice, race, datamodule.describe(), spec)
    json_path = write_json(record, run_dir / "advice.json")
    png_path = report_advice(advice, race, datamodule.describe(), run_dir)
    log.info("Advice: %s, %s", json_path, png_path)
    return {**record, "run_dir": str(run_dir), "advice_json": str(json_path), "advice_png": str(png_path)}
