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

Launchers (`hydra/launcher=...`, hydra-submitit-launcher's names and parameters):
  basic           jobs run in this process, one after another (the default);
  submitit_local  jobs run as submitit subprocesses on this machine, all at once;
  submitit_slurm  jobs run as a SLURM job array (`hydra.launcher.partition=...` etc.).
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path

from transferkit.reports.sweep_table import monitor_of, write_tables
from transferkit.rundir import create_fresh_dir, default_run_dir, write_json
from transferkit.run_guards import RunInterrupted

log = logging.getLogger("transferkit")

SWEEP_BASE = Path("multirun")
LAUNCHERS = ("basic", "submitit_local", "submitit_slurm")
LOCAL_LAUNCHERS = ("basic", "submitit_local")
# Strategies whose Lightning launcher starts the other processes by re-running sys.argv.
MULTI_PROCESS_STRATEGIES = ("ddp", "fsdp", "deepspeed")

RunFunction = Callable[[list[str]], dict]


@dataclass(frozen=True)
class Launcher:
    """Where the jobs run. `params` are hydra-submitit-launcher's (`hydra.launcher.<key>=...`);
    `generic` names those submitit shares between clusters (the others get the cluster's prefix)."""

    name: str = "basic"
    params: dict = field(default_factory=dict)
    generic: frozenset[str] = frozenset()

    @property
    def is_local(self) -> bool:
        return self.name in LOCAL_LAUNCHERS


@dataclass(frozen=True)
class Job:
    """One point of the grid: its index (= its run directory's name) and all its overrides."""

    index: int
    overrides: tuple[str, ...]
    swept: Mapping[str, str]  # the swept keys and this job's values

    def argv(self, command: str, sweep_dir: Path) -> list[str]:
        return [command, *self.overrides, f"run_dir={sweep_dir / str(self.index)}"]

    def label(self) -> str:
        return " ".join(f"{k}={v}" for k, v in self.swept.items())


def multi_process_reason(trainer: Mapping) -> str | None:
    """Why these Trainer settings would start more than one process (`trainer.strategy=ddp`, ...), or None."""
    strategy = str(trainer.get("strategy") or "auto")
    if strategy.startswith(MULTI_PROCESS_STRATEGIES):
        return f"trainer.strategy={strategy}"
    if int(trainer.get("num_nodes") or 1) > 1:
        return f"trainer.num_nodes={trainer.get('num_nodes')}"
    devices, count = trainer.get("devices"), device_count(trainer.get("devices"), str(trainer.get("accelerator")))
    return f"trainer.devices={devices} ({count} devices, so Lightning picks DDP)" if count > 1 else None


def device_count(devices: object, accelerator: str) -> int:
    """How many devices Lightning would use for `trainer.devices` (roughly: enough to spot DDP)."""
    if isinstance(devices, (list, tuple)) or hasattr(devices, "__len__") and not isinstance(devices, str):
        return len(devices)
    text = str(devices).strip()
    if "," in text:
        return len([d for d in text.split(",") if d.strip()])
    if text in ("auto", "-1"):
        if accelerator not in ("auto", "gpu", "cuda"):
            return 1
        import torch

        return max(torch.cuda.device_count(), 1)
    return int(text) if text.isdigit() else 1


def refusal(trainer: Mapping, launcher: Launcher) -> str | None:
    """The one-line reason a job cannot run under this launcher, or None."""
    reason = multi_process_reason(trainer)
    if reason is None or not launcher.is_local:
        return None
    return (f"-m with {reason} is refused under the {launcher.name} launcher: Lightning starts each DDP "
            "worker by re-running this command line, so every worker would start the whole sweep again. "
            "Sweep with trainer.devices=1 (no ddp strategy), or run DDP jobs on a cluster with "
            "hydra/launcher=submitit_slurm hydra.launcher.tasks_per_node=<devices>.")


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


def launch_basic(command: str, jobs: list[Job], launcher: Launcher, sweep_dir: Path,
                 run: RunFunction) -> Iterator[dict]:
    """In this process, one job after another."""
    for job in jobs:
        log.info("Sweep job %d/%d: %s", job.index + 1, len(jobs), job.label() or "(no swept keys)")
        row = job_row(job, execute_job(run, job.argv(command, sweep_dir)))
        log_job_end(row, len(jobs))
        yield row


def launch_submitit(command: str, jobs: list[Job], launcher: Launcher, sweep_dir: Path,
                    run: RunFunction) -> Iterator[dict]:
    """As submitit jobs (a job array on SLURM, subprocesses with submitit_local), the way
    hydra-submitit-launcher builds its executor; each job runs `execute_job(run, argv)`."""
    argvs = [job.argv(command, sweep_dir) for job in jobs]
    submitted = build_executor(launcher).map_array(functools.partial(execute_job, run), argvs)
    for job, sub in zip(jobs, submitted):
        log.info("Sweep job %d/%d: %s (submitit job %s, log %s)", job.index + 1, len(jobs),
                 job.label(), sub.job_id, sub.paths.stderr)
    finished = 0
    try:
        for job, sub in zip(jobs, submitted):
            row = job_row(job, submitit_outcome(sub))
            finished += 1
            log_job_end(row, len(jobs))
            yield row
    except KeyboardInterrupt:
        for sub in submitted[finished:]:
            sub.cancel(check=False)
        yield job_row(jobs[finished], {"status": "interrupted", "error": "SIGINT", "exit_code": 130})


def build_executor(launcher: Launcher):
    """The submitit executor hydra-submitit-launcher would build from the same parameters."""
    import submitit

    kind = launcher.name.removeprefix("submitit_")
    params = dict(launcher.params)
    folder = params.pop("submitit_folder")
    init = {f"{kind}_max_num_timeout": params.pop("max_num_timeout")} if "max_num_timeout" in params else {}
    executor = submitit.AutoExecutor(folder=folder, cluster=kind, **init)
    executor.update_parameters(**{k if k in launcher.generic else f"{kind}_{k}": v for k, v in params.items()})
    return executor


def submitit_outcome(sub) -> dict:
    """The job's own record, or `failed` with submitit's first line when the process died."""
    try:
        return sub.results()[0]
    except Exception as err:  # noqa: BLE001 - killed, timed out, or crashed outside execute_job
        first = next((line for line in str(err).splitlines() if line.strip()), type(err).__name__)
        return {"status": "failed", "error": f"{type(err).__name__}: {first} (log: {sub.paths.stderr})"}


def execute_job(run: RunFunction, argv: list[str]) -> dict:
    """Run one job's command line; a failure becomes a record (the sweep goes on), a signal stops it."""
    start = time.time()
    try:
        results = run(argv)
    except RunInterrupted as err:
        return {"status": "interrupted", "error": first_line(err), "exit_code": err.exit_code,
                "wall_seconds": round(time.time() - start, 2)}
    except Exception as err:  # noqa: BLE001 - recorded in the table; debug=true logs the traceback
        log.debug("sweep job failed: %s", " ".join(argv), exc_info=True)
        row = {"status": getattr(err, "status", "failed"), "error": f"{type(err).__name__}: {first_line(err)}",
               "wall_seconds": round(time.time() - start, 2)}
        return {**row, "run_dir": str(record_failure(argv, row))}
    keep = ("status", "metrics", "monitor", "epochs", "wall_seconds", "run_dir", "recipe", "strategy")
    return {"status": "completed", **{k: results[k] for k in keep if k in results}}


def record_failure(argv: list[str], row: dict) -> Path:
    """The job's run directory with a results.json saying it failed (a run that got as far as
    training wrote its own; one that failed earlier, e.g. on a missing file, gets this one)."""
    run_dir = Path(argv[-1].removeprefix("run_dir="))
    if not (run_dir / "results.json").is_file():
        run_dir.mkdir(parents=True, exist_ok=True)
        write_json({"command": argv[0], "status": row["status"], "message": row["error"], "argv": argv,
                    "wall_seconds": row["wall_seconds"], "run_dir": str(run_dir)}, run_dir / "results.json")
    return run_dir


def first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


def job_row(job: Job, outcome: dict) -> dict:
    return {"job": job.index, "overrides": job.label(), "swept": dict(job.swept), **outcome}


def log_job_end(row: dict, total: int) -> None:
    if row["status"] == "completed":
        return
    log.error("Sweep job %d/%d %s: %s", row["job"] + 1, total, row["status"], row.get("error"))


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
