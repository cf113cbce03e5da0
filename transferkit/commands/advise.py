"""`python -m transferkit advise ...`: measure size and similarity, place the data in the matrix.

Extracts frozen backbone features of the training images (deterministic eval transform), scores
them (k-NN, linear probe, LogME against a random-init twin; see `transferkit.evaluation.measure`), logs the
quadrant and recipe, and writes `advice.json` and `advice.png` into the run directory.
`finetune.strategy=auto` in `fit` makes the same measurement through planning.
"""

from __future__ import annotations

import logging

from omegaconf import DictConfig, OmegaConf

from transferkit.training.builders import build_datamodule
from transferkit.evaluation.measure import measure_datamodule
from transferkit.planning.plan import plan_model
from transferkit.planning.race import plan_race
from transferkit.evaluation.reports.matrix_plot import plot_matrix
from transferkit.training.rundir import create_run_dir, write_config, write_json
from transferkit.evaluation.transferability import Advice

log = logging.getLogger("transferkit")


def describe(advice: Advice) -> str:
    lines = [f"quadrant: {advice.quadrant}  ->  python -m transferkit fit recipe={advice.recipe}",
             f"strategy: {advice.strategy}",
             f"size: {advice.num_images} images, {advice.num_classes} classes, "
             f"{advice.images_per_class:.0f} per class (threshold {advice.size_threshold:g})",
             f"similarity: {advice.similarity:.3f} (chance-normalised k-NN; threshold {advice.similarity_threshold:g})"]
    scores = {"k-NN accuracy": advice.knn_accuracy, "linear-probe accuracy": advice.linear_probe_accuracy,
              "LogME": advice.logme, "LogME random init": advice.logme_random, "LogME gain": advice.logme_gain}
    lines += [f"{name}: {value:.3f}" for name, value in scores.items() if value is not None]
    lines += [f"  because {reason}" for reason in advice.reasons]
    return "\n".join(lines)


def run(cfg: DictConfig) -> dict:
    plan = plan_model(cfg)
    datamodule = build_datamodule(plan.cfg)
    advice = measure_datamodule(plan.cfg, datamodule, plan.weights)
    run_dir = create_run_dir(plan.cfg.run_dir)
    write_config(plan.cfg, run_dir)
    race = plan_race(OmegaConf.to_container(plan.cfg.finetune), advice.to_dict(), int(plan.cfg.trainer.max_epochs))
    record = {**advice.to_dict(), "data": datamodule.describe(), "backbone": plan.cfg.model.backbone,
              "weights": str(plan.cfg.model.weights), "plan": plan.to_dict(), "race": race.to_dict()}
    json_path = write_json(record, run_dir / "advice.json")
    png_path = plot_matrix(advice, run_dir / "advice.png", name=datamodule.describe())
    log.info("%s", describe(advice))
    log.info("finetune=auto would race: %s (scratch %s: %s)", ", ".join(race.to_dict()["candidates"]),
             "enters" if race.scratch["entered"] else "left out", race.scratch["why"])
    log.info("Advice: %s, %s", json_path, png_path)
    return {**record, "run_dir": str(run_dir), "advice_json": str(json_path), "advice_png": str(png_path)}
