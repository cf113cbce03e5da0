"""`python -m transferkit summary model=resnet18 [data.image_size=224] [summary.layers=true]`:
the model's arithmetic, one row per stage (or per conv/pool/linear/norm layer).

Writes summary.md, summary.csv and results.json (see `transferkit.evaluation.summary` for the
columns). `summary.compare=true` adds LeNet-5, AlexNet, VGG-16, GoogLeNet and ResNet-50 side by side.
Random weights: nothing is loaded or downloaded.
"""

from __future__ import annotations

import logging

from omegaconf import DictConfig, OmegaConf, open_dict

from transferkit.evaluation.reports.summary_tables import write_summary
from transferkit.evaluation.summary import compare_table, register_architecture, summarize
from transferkit.planning.plan import plan_spec
from transferkit.training.rundir import create_run_dir, write_config, write_json

log = logging.getLogger("transferkit")


def architecture_only(cfg: DictConfig) -> DictConfig:
    """The config with `model.weights=none` unless the weights imply the architecture (a house name or
    a file): hub weights are neither needed nor looked for."""
    if str(cfg.model.weights) not in ("auto", "hub"):
        return cfg
    cfg = cfg.copy()
    with open_dict(cfg):
        cfg.model.weights = "none"
    return cfg


def run(cfg: DictConfig) -> dict:
    options = OmegaConf.to_container(cfg.summary, resolve=True) if cfg.get("summary") else {}
    register_architecture(str(cfg.model.backbone))
    spec = plan_spec(architecture_only(cfg), "summary", load_weights=False)
    record = summarize(spec.model, spec.finetune.options, options)
    run_dir = create_run_dir(spec.outputs.run_dir)
    write_config(spec.config, run_dir)
    results = write_summary(record, compare_table() if options.get("compare", False) else [], run_dir)
    write_json(results, run_dir / "results.json")
    log.info("Summary: %s", run_dir / "summary.md")
    return results
