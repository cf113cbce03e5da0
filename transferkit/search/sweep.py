"""Sweeps: `python -m transferkit fit -m optimizer.lr=0.01,0.001 finetune=freeze,full` runs the grid.

How it works. `cli.py` (the only Hydra user) expands the command line into jobs with Hydra's own
override parser and its BasicSweeper's grid logic (`OverridesParser`, `BasicSweeper.split_arguments`),
so the sweep syntax is Hydra's: comma lists, `range(1,4)`, `choice(a,b)`, `glob(small_*)` for group
options. It composes every job's config before anything trains (a typo fails the whole sweep in one
line, as Hydra's sweeper does), then this module runs each job through the same `cli.run` path a
single run takes and tabulates the results.

Why not Hydra's own runner (`@hydra.main` with `--multirun`): it parses argv itself (no positional
command), installs root logging handlers, writes `.hydra/` folders and job logs into every run
directory, prints its own tracebacks, and places runs by its `hydra.run.dir`/`hydra.sweep.dir`
settings. Keeping the grid expansion and leaving the running to `cli.run` keeps the CLI's contract
for every job: the positional command, fast start-up, one-line errors, the usual run directory
files, and a console of transferkit lines.

Layout: one sweep directory, `multirun/<date>/<time>/` (or `run_dir=...`; never reused), holding
one run directory per job (`0/`, `1/`, ...) and `sweep.csv`, `sweep.md` and `results.json`.
A failing job is recorded as failed and the sweep goes on; the exit code says some failed.
Jobs run where `hydra/launcher=` says (`basic`, `submitit_local`, `submitit_slurm`; see
transferkit/search/launchers.py).
"""

from __future__ import annotations

import logging
import time
from dataclasses import replace
from pathlib import Path

from transferkit.search.launchers import Job, Launcher, RunFunction, job_row, launch_basic, launch_submitit
from transferkit.evaluation.reports.sweep_table import monitor_of, write_tables
from transferkit.training.rundir import create_fresh_dir, default_run_dir, write_json
from transferkit.runtime.guards import RunInterrupted

log = logging.getLogger("transferkit")

SWEEP_BASE = Path("multirun")


def run_sweep(command: str, jobs: list[Job], launcher: Launcher, run_dir: str | None, run: RunFunction,
              argv: list[str]) -> dict:
    """Run every job, write sweep.csv, sweep.md and results.json; returns the sweep's results.

    Raises:
        RunInterrupted: a signal stopped the sweep (the tables list the jobs that ran).
    """
    start = time.time()
    sweep_dir = create_fresh_dir(Path(run_dir).expanduser() if run_dir else default_run_dir(base=SWEEP_BASE))
    log.info("Sweep: %d %s jobs, %s launcher, in %s", len(jobs), command, launcher.name, sweep_dir)
    if "submitit_folder" in launcher.params:  # hydra-submitit-launcher's default: <sweep dir>/.submitit/%j
        folder = str(launcher.params["submitit_folder"]).replace("{sweep_dir}", str(sweep_dir))
        launcher = replace(launcher, params={**launcher.params, "submitit_folder": folder})
    launch = launch_basic if launcher.name == "basic" else launch_submitit
    rows: list[dict] = []
    for row in launch(command, jobs, launcher, sweep_dir, run):
        rows.append(row)
        if row["status"] == "interrupted":
            break
    rows += [job_row(job, {"status": "not run"}) for job in jobs[len(rows):]]
    results = sweep_results(command, jobs, rows, launcher, sweep_dir, argv, time.time() - start)
    write_json(results, sweep_dir / "results.json")
    table = write_tables(results, sweep_dir)
    log.info("%s", table)
    log.info("Sweep table: %s", sweep_dir / "sweep.md")
    stopped = next((r for r in rows if r["status"] == "interrupted"), None)
    if stopped is not None:
        raise RunInterrupted(f"the sweep stopped at job {stopped['job']} ({stopped.get('error')}); "
                             f"finished jobs are in {sweep_dir / 'sweep.md'}.", stopped.get("exit_code", 130))
    return results


def sweep_results(command: str, jobs: list[Job], rows: list[dict], launcher: Launcher, sweep_dir: Path,
                  argv: list[str], seconds: float) -> dict:
    """The sweep's results.json: every job's row, the best one, counts and status."""
    monitor = monitor_of(rows)
    counts = {status: sum(r["status"] == status for r in rows) for status in sorted({r["status"] for r in rows})}
    done = [r for r in rows if r["status"] == "completed" and monitor and monitor["metric"] in r.get("metrics", {})]
    sign = -1 if monitor and monitor["mode"] == "max" else 1
    best = min(done, key=lambda r: sign * r["metrics"][monitor["metric"]]) if done else None
    status = ("interrupted" if counts.get("interrupted") else
              "completed" if counts.get("completed", 0) == len(rows) else "failed")
    swept: dict[str, list[str]] = {}
    for job in jobs:
        for key, value in job.swept.items():
            swept.setdefault(key, [])
            if value not in swept[key]:
                swept[key].append(value)
    return {"kind": "sweep", "command": command, "status": status, "argv": argv, "sweep_dir": str(sweep_dir),
            "launcher": {"name": launcher.name, "params": launcher.params}, "swept": swept, "monitor": monitor,
            "counts": counts, "best": best, "jobs": rows, "wall_seconds": round(seconds, 2)}


def failure_line(results: dict) -> str | None:
    """`2 of 4 sweep jobs did not complete; see .../sweep.md`, or None when all completed."""
    if results["status"] == "completed":
        return None
    total, done = len(results["jobs"]), results["counts"].get("completed", 0)
    return f"{total - done} of {total} sweep jobs did not complete; see {Path(results['sweep_dir']) / 'sweep.md'}"
