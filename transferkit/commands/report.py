"""`python -m transferkit report run=<run directory>`: rebuild that run's report.html and report/
from the files the run saved (no re-evaluation; see transferkit.evaluation.reports.run_report)."""

from __future__ import annotations

import logging
import zipfile
from pathlib import Path

from omegaconf import DictConfig

from transferkit.errors import ConfigError
from transferkit.evaluation.reports.run_report import OUTPUTS_FILE, REPORT_DIR, write_report

log = logging.getLogger("transferkit")

EXAMPLE = "python -m transferkit report run=outputs/<date>/<time>"


def check_run(value) -> Path:
    """The run directory named by `run=`, or a ConfigError saying what is wrong with it."""
    if not value:
        raise ConfigError(f"run= is missing: give the run directory whose report to rebuild, e.g. {EXAMPLE} "
                          "(run_dir= is where a new run writes).")
    path = Path(str(value)).expanduser()
    if not path.is_dir():
        raise ConfigError(f"run={str(value)!r} is not a directory; give a run directory written by fit or "
                          f"test, e.g. {EXAMPLE}.")
    if not any(path.iterdir()):
        raise ConfigError(f"run={str(value)!r} is an empty directory; give a run directory written by fit or "
                          f"test, e.g. {EXAMPLE}.")
    if not (path / REPORT_DIR / OUTPUTS_FILE).is_file():
        raise ConfigError(f"run={str(value)!r} has no {REPORT_DIR}/{OUTPUTS_FILE} (fit and test save it with "
                          "report.enabled=true); evaluate its checkpoint again with python -m transferkit "
                          "test ckpt_path=<run>/checkpoints/best.ckpt, which writes a run with a report.")
    return path.resolve()


def run(cfg: DictConfig) -> dict:
    path = check_run(cfg.get("run"))
    try:
        html = write_report(path)
    except (OSError, ValueError, KeyError, zipfile.BadZipFile) as err:
        raise ConfigError(f"run={str(cfg.run)!r}: cannot rebuild its report from {REPORT_DIR}/{OUTPUTS_FILE} "
                          f"({type(err).__name__}: {err}).") from err
    files = sorted(str(p.relative_to(path)) for p in (path / REPORT_DIR).iterdir())
    log.info("Report: %s", html)
    return {"command": "report", "run_dir": str(path), "html": str(html), "files": ["report.html", *files]}
