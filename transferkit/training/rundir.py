"""The run directory: where every run writes its config, checkpoints, metrics and results."""

from __future__ import annotations

import json
import logging
import os
from datetime import datetime
from pathlib import Path

from omegaconf import OmegaConf

from transferkit.runtime.disk import check_writable
from transferkit.runtime.lock import acquire_run_lock, release_run_lock
from transferkit.runtime.rendezvous import agree_on_run_dir, detect_launch
from transferkit.runtime.run_paths import portable

log = logging.getLogger(__name__)

SPEC_FILE = "spec.json"
RESULTS_FILE = "results.json"
ENV_RUN_DIR = "TRANSFERKIT_RUN_DIR"
ENV_CV_DIR = "TRANSFERKIT_CV_DIR"  # a cv run's own directory, for its DDP workers (each fold has ENV_RUN_DIR)


def is_ddp_child() -> bool:
    """True inside processes that Lightning's DDP launcher started (local rank > 0)."""
    return int(os.environ.get("LOCAL_RANK", "0")) > 0 and ENV_RUN_DIR in os.environ


def writes_the_run() -> bool:
    """True in the one process of a launch that writes the run directory (global rank 0): not in the
    workers Lightning starts, nor in the other ranks of torchrun, SLURM or a multi-node launch."""
    env = os.environ
    return not is_ddp_child() and all(int(env.get(k) or 0) == 0
                                      for k in ("RANK", "LOCAL_RANK", "NODE_RANK", "SLURM_PROCID"))


def lock_run_dir(run_dir: Path, key: str = "resume") -> None:
    """Take `run_dir`'s writer lock (`transferkit.runtime.lock`) in the process that writes it; a no-op in
    the others. Raises `RunDirBusyError` (naming the holder's pid and host) if another process writes it."""
    if writes_the_run():
        acquire_run_lock(run_dir, key)


def unlock_run_dir(run_dir: Path) -> None:
    """Let `run_dir` go when this process is done writing it (the lock also ends with the process)."""
    release_run_lock(run_dir)


def default_run_dir(now: datetime | None = None, base: Path = Path("outputs")) -> Path:
    now = now or datetime.now()
    return base / now.strftime("%Y-%m-%d") / now.strftime("%H-%M-%S")


def create_run_dir(run_dir: str | None, num_nodes: int = 1) -> Path:
    """Create a fresh run directory (never reusing one that has files in it).

    DDP children get their parent's directory through `TRANSFERKIT_RUN_DIR`, and the processes of a
    multi-node, torchrun or SLURM launch take global rank 0's (`transferkit.runtime.rendezvous`), so one run
    writes exactly one directory however many processes it spans.
    """
    if is_ddp_child():
        return Path(os.environ[ENV_RUN_DIR])

    launch = detect_launch(num_nodes)
    candidate = fresh_run_dir(run_dir) if launch is None else agree_on_run_dir(launch, lambda: fresh_run_dir(run_dir))
    os.environ[ENV_RUN_DIR] = str(candidate)
    return candidate


def fresh_run_dir(run_dir: str | None) -> Path:
    return create_fresh_dir(Path(run_dir).expanduser() if run_dir else default_run_dir())


def create_fresh_dir(path: Path) -> Path:
    """Create `path`, or `path-1`, `path-2`, ... if it holds files already; returns it resolved. A folder
    that cannot be written stops here, in one line (`runtime.disk.NotWritableError`)."""
    check_writable(path)
    candidate, n = path, 1
    while candidate.exists() and any(candidate.iterdir()):
        candidate = path.with_name(f"{path.name}-{n}")
        n += 1
    candidate.mkdir(parents=True, exist_ok=True)
    return candidate.resolve()


def reuse_run_dir(run_dir: str) -> Path:
    """`fit resume=...`: the run directory being continued (the one exception to never reusing one;
    `transferkit.training.resume` checked it holds a run), writable and locked for this process."""
    path = Path(run_dir).expanduser().resolve()
    check_writable(path)
    lock_run_dir(path)  # one writer: a second resume of it stops here (kept until unlock_run_dir or exit)
    os.environ[ENV_RUN_DIR] = str(path)
    return path


def write_config(config: dict, run_dir: Path) -> Path:
    """config.yaml: the composed config users know (resolved), which `fit resume=` and `test` read back.
    Its `run_dir` is `.` (this directory, wherever it is now), the run's own files relative to it."""
    path = run_dir / "config.yaml"
    resolved = OmegaConf.to_container(OmegaConf.create(config), resolve=True)
    path.write_text(OmegaConf.to_yaml(portable({**resolved, "run_dir": str(run_dir)}, run_dir)))
    return path


def write_spec(spec, run_dir: Path) -> Path:
    """spec.json: what planning decided (`transferkit.planning.spec.RunSpec.to_dict`), with its format version."""
    return write_json(spec.to_dict(), run_dir / SPEC_FILE)


def write_json(data: dict, path: Path) -> Path:
    """`data` as JSON at `path`, atomically. A run's results.json and spec.json name the run's own files
    relative to its directory (`transferkit.runtime.run_paths`), so the directory can move."""
    if path.name in (RESULTS_FILE, SPEC_FILE):
        data = portable(data, path.parent)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, default=str))
    tmp.replace(path)  # atomic: a killed run never leaves half a results.json
    return path
