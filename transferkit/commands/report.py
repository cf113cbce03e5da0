"""`python -m transferkit report run=<run directory>`: rebuild that run's report.html and report/
from the files the run saved (no re-evaluation; see transferkit.evaluation.reports.run_report)."""

from __future__ import annotations

import logging

from omegaconf import DictConfig

from transferkit.evaluation.reports.run_report import rebuild_report

log = logging.getLogger("transferkit")


def run(cfg: DictConfig) -> dict:
    result = rebuild_report(cfg.get("run"))
    log.info("Report: %s", result["html"])
    return result
