"""`python -m transferkit fit ...`: train, keep best + last checkpoints, test the best one."""

from __future__ import annotations

from omegaconf import DictConfig

from transferkit.planning.plan import RunPlan
from transferkit.training.session import train_and_test


def run(cfg: DictConfig) -> dict:
    plan = RunPlan(cfg, "fit")  # the config stops here: the rest of the run receives the spec
    results, *_ = train_and_test(plan.spec, plan.datamodule)
    return results
