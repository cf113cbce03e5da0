"""`python -m transferkit fit ...`: train, keep best + last checkpoints, test the best one."""

from __future__ import annotations

from omegaconf import DictConfig

from transferkit.commands.common import train_and_test


def run(cfg: DictConfig) -> dict:
    results, *_ = train_and_test(cfg, "fit")
    return results
