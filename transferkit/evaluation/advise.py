"""The `advise` command's report: where the data sits in the matrix, why, and what `finetune=auto` would
race (`advice.json`, `advice.png` and the log). The measurement itself is `transferkit.evaluation.measure`."""

from __future__ import annotations

import logging
from pathlib import Path

from transferkit.evaluation.reports.matrix_plot import plot_matrix
from transferkit.evaluation.transferability import Advice
from transferkit.planning.spec import RunSpec

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


def advice_record(advice: Advice, race: dict, data: str, spec: RunSpec) -> dict:
    """advice.json: the measurement, the data, the model it was measured with and the race it plans
    (`race`: `RacePlan.to_dict()`)."""
    return {**advice.to_dict(), "data": data, "backbone": spec.model.backbone,
            "weights": str(spec.model.options.get("weights")), "plan": spec.record(), "race": race}


def report_advice(advice: Advice, race: dict, data: str, run_dir: Path) -> Path:
    """Draw advice.png into `run_dir` and log the advice and the race; returns the picture's path."""
    png_path = plot_matrix(advice, run_dir / "advice.png", name=data)
    scratch = race["scratch"]
    log.info("%s", describe(advice))
    log.info("finetune=auto would race: %s (scratch %s: %s)", ", ".join(race["candidates"]),
             "enters" if scratch["entered"] else "left out", scratch["why"])
    return png_path
