"""`python -m transferkit audit data.root=...`: what is wrong with a data set before training on it.

Same data and model settings as `fit`. Writes duplicates.csv (exact and near pairs, cross-split
first), label_issues.csv (every labelled image, most suspicious first), outliers.csv, audit.html and
results.json. `cv=<cv run>` scores the labels with that run's out-of-fold probabilities instead of a
k-fold solved head; `ckpt_path=...` measures the test accuracy with and without the leaked images.
The folder is only read (see `transferkit.evaluation.audit`).
"""

from __future__ import annotations

from omegaconf import DictConfig, OmegaConf

from transferkit.evaluation.audit.options import audit_options
from transferkit.evaluation.audit.run import check_audit_task, run_audit
from transferkit.planning.checkpoint import checkpoint_spec
from transferkit.planning.plan import RunPlan
from transferkit.training.rundir import create_run_dir, write_config, write_json, write_spec


def run(cfg: DictConfig) -> dict:
    check_audit_task(str(cfg.task.kind))
    options = audit_options(OmegaConf.to_container(cfg.audit, resolve=True) if cfg.get("audit") else None)
    checkpoint = checkpoint_spec(cfg.ckpt_path) if cfg.get("ckpt_path") else None
    plan = RunPlan(cfg, "audit", train=False)  # the data scanned (and checked) before a run directory exists
    run_dir = create_run_dir(plan.spec.outputs.run_dir)
    write_config(plan.spec.config, run_dir)
    write_spec(plan.spec, run_dir)
    write_json(plan.datamodule.split_record, run_dir / "splits.json")
    results = run_audit(plan.spec, plan.datamodule, options, run_dir, checkpoint, cfg.get("cv"))
    write_json(results, run_dir / "results.json")
    return results
