"""One writer per run directory: an OS file lock (`fcntl.flock`) on `<run dir>/.transferkit.lock`.

The process that writes a run (global rank 0; DDP workers and other ranks never take it) holds the lock
while it runs; a second `fit resume=` of the same directory fails at once, naming the holder's PID and
host (written into the lock file). The kernel drops the lock when its holder exits, however it exits
(`kill -9` too), so a lock left by a dead process is simply taken over. Where flock is missing
(Windows) runs are not locked.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import time
from datetime import datetime
from pathlib import Path

from transferkit.errors import ConfigError

try:
    import fcntl
except ImportError:  # Windows: no flock
    fcntl = None

log = logging.getLogger(__name__)

LOCK_FILE = ".transferkit.lock"
# The locks this process holds: run directory -> open file descriptor. A held OS lock is process state by
# nature (it lives as long as the descriptor), so it is kept here, not in an object a caller could drop.
_HELD: dict[Path, int] = {}


class RunDirBusyError(ConfigError):
    """Another process writes this run directory (it holds its lock); `holder` has its pid and host."""

    def __init__(self, message: str, holder: dict) -> None:
        super().__init__(message)
        self.holder = holder


def read_holder(run_dir: Path, tries: int = 10) -> dict:
    """`{"pid", "host", "since"}` of the lock's holder, as it wrote them (empty if it has not yet)."""
    for attempt in range(tries):
        try:
            text = (Path(run_dir) / LOCK_FILE).read_text()
            return json.loads(text) if text else {}
        except (OSError, json.JSONDecodeError):
            pass
        time.sleep(0.05 * (attempt < tries - 1))  # the holder writes just after it locks
    return {}


def busy_message(run_dir: Path, holder: dict, key: str) -> str:
    pid, host = holder.get("pid"), holder.get("host")
    if pid is None:
        return (f"{key}={run_dir}: another process writes this run (it holds {LOCK_FILE}); stop it first, "
                "then resume.")
    where = "" if host == socket.gethostname() else f" on host {host}"
    return (f"{key}={run_dir}: the run is still going (pid {pid}{where}, since {holder.get('since', '?')}); "
            f"stop it first (kill -TERM {pid} saves its last checkpoint), then resume.")


def acquire_run_lock(run_dir: Path, key: str = "resume") -> None:
    """Hold `run_dir`'s lock for this process (again: nothing to do); `RunDirBusyError` if another holds it.
    `key` is the setting the message names (`resume`, `run_dir`)."""
    run_dir = Path(run_dir).resolve()
    if fcntl is None or run_dir in _HELD:
        return
    fd = os.open(run_dir / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        holder = read_holder(run_dir)
        raise RunDirBusyError(busy_message(run_dir, holder, key), holder) from None
    except OSError:
        os.close(fd)
        raise
    holder = {"pid": os.getpid(), "host": socket.gethostname(),
              "since": datetime.now().isoformat(timespec="seconds")}
    os.ftruncate(fd, 0)
    os.pwrite(fd, json.dumps(holder).encode(), 0)
    _HELD[run_dir] = fd
    log.debug("Locked %s (pid %d).", run_dir, os.getpid())


def release_run_lock(run_dir: Path) -> None:
    """Let `run_dir` go (a later process, or this one, may take it); nothing if it is not held."""
    fd = _HELD.pop(Path(run_dir).resolve(), None)
    if fd is None:
        return
    fcntl.flock(fd, fcntl.LOCK_UN)
    os.close(fd)


def holds_run_lock(run_dir: Path) -> bool:
    return Path(run_dir).resolve() in _HELD
