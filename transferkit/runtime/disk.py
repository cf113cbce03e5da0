"""Disk space for a run: one clear line when the disk fills up (or a file-size limit is hit) while a
checkpoint is written, and a check before training that the run directory is writable and has room.

A checkpoint write that runs out of space raises `DiskFullError` (a `RunStopped`: results.json says
failed, the shell gets exit 1 and one line). Its message names the folder, the space free there and the
bytes the checkpoint needs, and says how to continue: the atomic writer (`checkpoint_io`) leaves the
previous checkpoint whole, so `fit resume=` continues once space is freed.
"""

from __future__ import annotations

import errno
import logging
import resource
import shlex
import shutil
import tempfile
from pathlib import Path

from transferkit.runtime.stops import RunStopped

log = logging.getLogger(__name__)

# EFBIG: a write past the file-size limit (`ulimit -f`); CPython ignores SIGXFSZ from its start, so the write
# fails instead of the signal killing the process.
FULL_ERRNOS = {errno.ENOSPC: "disk full", errno.EDQUOT: "disk quota exceeded", errno.EFBIG: "file-size limit hit"}
NOT_WRITABLE_ERRNOS = frozenset({errno.EROFS, errno.EACCES, errno.EPERM})
# torch.save's zip writer reports a failed write as a RuntimeError (the OSError is its __context__ when
# it writes to a Python file, and lost when it writes to a path).
TORCH_WRITE_FAILURES = ("unexpected pos", "file write failed", "PytorchStreamWriter failed")


class RunDirError(RunStopped, OSError):
    """A run directory that cannot take what the run writes: one line, exit 1, `results.json` failed."""

    status = "failed"
    exit_code = 1
    default_errno = errno.EIO

    def __init__(self, message: str, code: int | None = None) -> None:
        OSError.__init__(self, self.default_errno if code is None else code, message)
        self.message = message

    def __str__(self) -> str:
        return self.message

    def __reduce__(self):  # DDP and sweeps carry errors between processes
        return type(self), (self.message, self.errno)


class DiskFullError(RunDirError):
    """The disk (or a quota, or the file-size limit) has no room for a checkpoint; the message is one line
    naming the folder, the free space and the bytes needed."""

    default_errno = errno.ENOSPC


class NotWritableError(RunDirError):
    """The run directory cannot be written (read-only file system, no permission)."""

    default_errno = errno.EROFS


def human_bytes(count: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(count) < 1000 or unit == "TB":
            return f"{count:.0f} {unit}" if unit == "B" else f"{count:.1f} {unit}"
        count /= 1000
    return f"{count:.1f} TB"


def free_bytes(folder: Path) -> int:
    """Bytes free for this user in `folder` (or its nearest existing parent)."""
    return shutil.disk_usage(existing_parent(folder)).free


def file_size_limit() -> int | None:
    """This process's file-size limit (`ulimit -f`, RLIMIT_FSIZE) in bytes, or None when unlimited."""
    soft, _ = resource.getrlimit(resource.RLIMIT_FSIZE)
    return None if soft == resource.RLIM_INFINITY else int(soft)


def existing_parent(path: Path) -> Path:
    path = Path(path).absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def check_writable(folder: Path) -> None:
    """Raise `NotWritableError` unless a file can be created in `folder` (or, before it exists, in the
    nearest folder above it that does): a real write, since a read-only mount stops root where `chmod`
    does not."""
    place = existing_parent(Path(folder))
    try:
        with tempfile.TemporaryFile(dir=place, prefix=".transferkit-write-check-"):
            pass
    except OSError as err:
        if err.errno not in NOT_WRITABLE_ERRNOS:
            raise
        why = "a read-only file system" if err.errno == errno.EROFS else "not writable by this user"
        raise NotWritableError(f"run_dir={str(folder)!r} cannot be written: {place} is {why} "
                               f"({err.strerror}), so the run could save nothing; point run_dir= at a "
                               "writable folder.", err.errno) from err


def full_errno(err: BaseException, needed: int | None = None, folder: Path | None = None) -> int | None:
    """The errno (ENOSPC, EDQUOT, EFBIG) that says `err` is a write that ran out of room, or None.

    Follows `__cause__`/`__context__` (torch wraps the OSError in a RuntimeError); a torch write failure
    without one counts when the free space or the file-size limit is below `needed`."""
    seen, current = set(), err
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, OSError) and current.errno in FULL_ERRNOS:
            return current.errno
        current = current.__cause__ or current.__context__
    if not (isinstance(err, RuntimeError) and any(text in str(err) for text in TORCH_WRITE_FAILURES)):
        return None
    if needed is None or folder is None:
        return None
    limit = file_size_limit()
    if limit is not None and limit < needed:
        return errno.EFBIG
    return errno.ENOSPC if free_bytes(folder) < needed else None


def checkpoint_nbytes(checkpoint) -> int:
    """Bytes of the tensors in a checkpoint dict (what torch.save writes, less a small overhead)."""
    import torch  # lazy: this module is imported before torch is needed (preflight of the run directory)

    total, stack = 0, [checkpoint]
    while stack:
        item = stack.pop()
        if isinstance(item, torch.Tensor):
            total += item.nelement() * item.element_size()
        elif isinstance(item, dict):
            stack.extend(item.values())
        elif isinstance(item, (list, tuple)):
            stack.extend(item)
    return total


def resume_hint(folder: Path) -> str:
    """How to continue the run whose checkpoints live in `folder`."""
    run_dir = folder.parent if folder.name == "checkpoints" else None
    if run_dir is not None and (run_dir / "config.yaml").is_file():
        return f"python -m transferkit fit resume={shlex.quote(str(run_dir))}"
    return "python -m transferkit fit resume=<run directory>"


def describe_full(target: Path, needed: int, code: int) -> str:
    """One line: what ran out, the folder and its free space, what the checkpoint needs, what to do."""
    folder = Path(target).parent
    where = f"{folder} has {human_bytes(free_bytes(folder))} free"
    needs = f"the checkpoint needs about {human_bytes(needed)}"
    then = (f"The previous {target.name} is intact; resume with: {resume_hint(folder)}" if Path(target).is_file()
            else "No checkpoint was saved yet: start the run again once there is room")
    if code == errno.EFBIG:
        limit = file_size_limit()
        allowed = f"at most {human_bytes(limit)}" if limit is not None else "less than that"
        return (f"file-size limit hit while writing {target.name}: {needs}, but this process may write files of "
                f"{allowed} (ulimit -f); {where}. Raise the limit (ulimit -f unlimited). {then}")
    return (f"{FULL_ERRNOS.get(code, 'disk full')} while writing {target.name}: {where}, and {needs}. "
            f"Free space there (or move the run to a bigger disk). {then}")


def disk_full_error(target: Path, needed: int, code: int) -> DiskFullError:
    return DiskFullError(describe_full(target, needed, code), code)
