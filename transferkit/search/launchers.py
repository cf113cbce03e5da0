"""Where sweep jobs run, and the record each job leaves (see transferkit/search/sweep.py for the sweep itself).

Launchers keep hydra-submitit-launcher's names and parameters (`hydra/launcher=...`,
`hydra.launcher.<key>=...`, checked against its own parameter dataclasses), so a Hydra user's
cluster settings carry over:
  basic           jobs run in this process, one after another (the default);
  submitit_local  jobs run as submitit subprocesses on this machine, all at once;
  submitit_slurm  jobs run as a SLURM job array (`hydra.launcher.partition=...`, `timeout_min`, ...).
The submitit executor is built the way that plugin's launcher builds it; each job pickles
`execute_job(cli.run_job, argv)`, so it takes the same `cli.run` path as a job of the basic launcher.

Every launcher runs a DDP job's processes differently: Lightning starts DDP workers by re-running
`sys.argv`, which under the two local launchers would start the whole sweep again in every worker,
so `refusal` turns such jobs away; on SLURM, srun starts one task per device and Lightning joins them.
"""

from __future__ import annotations

import functools
import logging
import shutil
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from omegaconf import OmegaConf

from transferkit.errors import ConfigError, did_you_mean
from transferkit.training.rundir import write_json
from transferkit.runtime.guards import RunInterrupted

log = logging.getLogger("transferkit")

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


def launcher_of(command: str, overrides: list[str]) -> Launcher:
    """`hydra/launcher=basic|submitit_local|submitit_slurm` and its `hydra.launcher.<key>=...`, checked
    against hydra-submitit-launcher's own parameter dataclasses (timeout_min, partition, gpus_per_node, ...).

    Raises:
        ConfigError: an unknown launcher, a Hydra setting a sweep does not read, no SLURM for submitit_slurm.
    """
    names = [o.split("=", 1)[1] for o in overrides if o.startswith("hydra/launcher=")]
    keys = [o.removeprefix("hydra.launcher.") for o in overrides if o.startswith("hydra.launcher.")]
    other = [o for o in overrides if not o.startswith(("hydra/launcher=", "hydra.launcher."))]
    name = names[-1] if names else "basic"
    if other:
        raise ConfigError(f"{other[0]!r}: of Hydra's own settings a sweep reads hydra/launcher=... and "
                          "hydra.launcher.<key>=... only.")
    if name not in LAUNCHERS:
        raise ConfigError(f"hydra/launcher={name!r} is unknown; use one of {list(LAUNCHERS)}.{did_you_mean(name, LAUNCHERS)}")
    if name == "basic":
        if keys:
            raise ConfigError("hydra.launcher.<key>=... sets a submitit launcher: add hydra/launcher=submitit_local "
                              "or hydra/launcher=submitit_slurm.")
        return Launcher()
    try:
        from hydra_plugins.hydra_submitit_launcher import config as queues
    except ImportError:
        raise ConfigError(f"hydra/launcher={name} needs hydra-submitit-launcher: pip install 'transferkit[sweep]'.") from None
    if name == "submitit_slurm" and not shutil.which("srun"):
        raise ConfigError("hydra/launcher=submitit_slurm needs SLURM (srun and sbatch on PATH): start the sweep "
                          "on the cluster's login node, or use hydra/launcher=submitit_local on this machine.")
    node = OmegaConf.structured(queues.LocalQueueConf if name == "submitit_local" else queues.SlurmQueueConf)
    node.submitit_folder, node.name = "{sweep_dir}/.submitit/%j", f"transferkit-{command}"
    params = OmegaConf.to_container(OmegaConf.merge(node, OmegaConf.from_dotlist(keys)), resolve=True)
    params.pop("_target_", None)
    return Launcher(name, params, frozenset(OmegaConf.structured(queues.BaseQueueConf).keys()))


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
    except (RunInterrupted, KeyboardInterrupt) as err:  # Ctrl+C mid-fit, or between two of its steps
        return {"status": "interrupted", "error": first_line(err) if str(err) else "SIGINT",
                "exit_code": getattr(err, "exit_code", 130), "wall_seconds": round(time.time() - start, 2)}
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
