"""Checkpoint files on disk: written atomically, and checked before a run resumes from one.

`AtomicCheckpointIO` is a Lightning `CheckpointIO` plugin: a checkpoint is written to a temporary
file in the same folder, flushed and fsynced, then renamed over the old one (`os.replace`), and the
folder is fsynced, so a crash or a full disk at any moment leaves either the old file or the new one,
never half of one. A full disk (or file-size limit) raises `runtime.disk.DiskFullError`: one line.
It composes with Lightning's `AsyncCheckpointIO(AtomicCheckpointIO())` (the write moves to a thread),
which is what `builders.build_plugins` gives every trainer.
"""

from __future__ import annotations

import logging
import os
import threading
import zipfile
from pathlib import Path
from typing import Any

import torch
from lightning_fabric.plugins.io.torch_io import TorchCheckpointIO

from transferkit.runtime.disk import checkpoint_nbytes, disk_full_error, full_errno

log = logging.getLogger(__name__)


def fsync_folder(folder: Path) -> None:
    """Make a rename in `folder` durable (POSIX; elsewhere the rename itself has to do)."""
    if os.name != "posix":
        return
    handle = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(handle)
    finally:
        os.close(handle)


class AtomicCheckpointIO(TorchCheckpointIO):
    """`torch.save` to `.<name>.<pid>.<thread>.tmp` beside the target, fsync, `os.replace`.

    Remote paths (`s3://...`) keep Lightning's own fsspec transaction.
    """

    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options: Any | None = None) -> None:
        if "://" in str(path):
            super().save_checkpoint(checkpoint, path, storage_options)
            return
        if storage_options is not None:
            raise TypeError(f"{type(self).__name__} takes no storage_options (got {storage_options!r}).")
        target = Path(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        temp = target.with_name(f".{target.name}.{os.getpid()}.{threading.get_ident()}.tmp")
        try:
            with temp.open("wb") as handle:
                torch.save(checkpoint, handle)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(temp, target)
        except (OSError, RuntimeError) as err:
            needed = checkpoint_nbytes(checkpoint)
            code = full_errno(err, needed, target.parent)
            if code is None:
                raise
            temp.unlink(missing_ok=True)  # its space is free again when the message measures it
            raise disk_full_error(target, needed, code) from err
        finally:
            temp.unlink(missing_ok=True)  # gone after a successful replace; removes a failed write's half
        fsync_folder(target.parent)


def remove_stale_temps(folder: Path) -> list[Path]:
    """Delete the temporary files of writers killed mid-write (`kill -9`, a power cut): those whose
    process is gone. Their targets are intact; the halves only take disk space."""
    removed = []
    for temp in Path(folder).glob(".*.tmp"):
        parts = temp.name.split(".")
        pid = int(parts[-3]) if len(parts) >= 5 and parts[-3].isdigit() else None
        if pid is None or pid == os.getpid() or process_exists(pid):
            continue
        temp.unlink(missing_ok=True)
        removed.append(temp)
    if removed:
        log.info("Removed %d half-written checkpoint file(s) of a killed run in %s.", len(removed), folder)
    return removed


def process_exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def wait_for_checkpoint_writes(trainer) -> None:
    """Block until the checkpoints a background writer (`AsyncCheckpointIO`) holds are on disk, for code
    that reads them during a fit. (Its teardown waits and raises a failed write; the next save restarts it.)"""
    io = getattr(getattr(trainer, "strategy", None), "checkpoint_io", None)
    if io is not None and getattr(io, "_executor", None) is not None:
        io.teardown()


def checkpoint_problem(path: Path) -> str | None:
    """What is wrong with the checkpoint file at `path` (missing, empty, truncated), or None.

    torch writes checkpoints as zip archives; a cut-off file has no zip directory at its end, and a
    damaged member fails its CRC. Nothing is unpickled here.
    """
    if not path.is_file():
        return "does not exist"
    size = path.stat().st_size
    if size == 0:
        return "is empty (0 bytes)"
    if not zipfile.is_zipfile(path):
        return f"is truncated or not a checkpoint ({size} bytes, no zip directory at its end)"
    try:
        with zipfile.ZipFile(path) as archive:
            bad = archive.testzip()
    except (zipfile.BadZipFile, OSError, EOFError) as err:
        return f"cannot be read ({err})"
    return f"is damaged (member {bad!r} fails its checksum)" if bad else None


def epochs_done(checkpoint: dict) -> int:
    """Epochs fully trained when `checkpoint` was saved (Lightning's `epoch` is the epoch index
    at saving time, which is one less for a checkpoint saved at the end of that epoch)."""
    loop = checkpoint.get("loops", {}).get("fit_loop", {})
    progress = loop.get("epoch_progress", {}).get("current")
    if not progress:
        return int(checkpoint.get("epoch", 0))
    last_batch = bool(loop.get("epoch_loop.batch_progress", {}).get("is_last_batch"))
    return int(progress["processed"]) + int(last_batch and progress["started"] > progress["processed"])


def checkpoint_meta(path: Path) -> dict:
    """`epochs_done` and `global_step` of a checkpoint, read without loading its tensors (mmap)."""
    checkpoint = torch.load(path, map_location="cpu", mmap=True, weights_only=True)
    return {"epochs_done": epochs_done(checkpoint), "global_step": int(checkpoint.get("global_step", 0))}


def describe_bad_checkpoint(path: Path, problem: str, fallback: Path | None) -> str:
    """One line: the file, what is wrong with it, and the previous good checkpoint if there is one."""
    line = f"{path} {problem}"
    if fallback is not None and fallback.is_file() and checkpoint_problem(fallback) is None:
        done = checkpoint_meta(fallback)["epochs_done"]
        return (f"{line}; the previous good checkpoint is {fallback} (after epoch {done}): copy it over "
                f"{path.name} to resume from there, or start a new run.")
    return f"{line}, and there is no good checkpoint to fall back on; start a new run."
