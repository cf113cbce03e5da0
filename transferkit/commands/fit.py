"""`python -m transferkit fit ...`: train, keep best + last checkpoints, test the best one."""

from __future__ import annotations

from omegaconf import DictConfig

from transferkit.planning.plan import plan_run
from transferkit.training.session import train_and_test


def run(cfg: DictConfig) -> dict:
    spec, datamodule = plan_run(cfg, "fit")
    results, *_ = train_and_test(spec, datamodule)
    return results
