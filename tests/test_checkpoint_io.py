"""Atomic checkpoint writes (a crash between write and rename keeps the old file) and the one-line
diagnosis of a checkpoint that cannot be resumed from."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from pytorch_lightning.plugins.io import AsyncCheckpointIO

from transferkit.training.builders import build_plugins
from transferkit.runtime.checkpoint_io import (AtomicCheckpointIO, checkpoint_problem, describe_bad_checkpoint,
                                               remove_stale_temps)


def temp_files(folder: Path) -> list[Path]:
    return sorted(folder.glob(".*.tmp"))


def test_atomic_save_leaves_only_the_checkpoint(tmp_path):
    target = tmp_path / "checkpoints" / "last.ckpt"
    AtomicCheckpointIO().save_checkpoint({"w": torch.arange(4)}, target)
    assert torch.equal(torch.load(target, weights_only=True)["w"], torch.arange(4))
    assert temp_files(target.parent) == []


def test_failure_between_write_and_replace_keeps_the_old_file(tmp_path, monkeypatch):
    target = tmp_path / "last.ckpt"
    io = AtomicCheckpointIO()
    io.save_checkpoint({"w": torch.zeros(3)}, target)
    old = target.read_bytes()

    def power_cut(src, dst):
        raise OSError("injected: the disk went away before the rename")

    monkeypatch.setattr(os, "replace", power_cut)
    with pytest.raises(OSError, match="injected"):
        io.save_checkpoint({"w": torch.ones(3)}, target)
    assert target.read_bytes() == old
    assert temp_files(tmp_path) == []  # the half-done write is cleaned up


def test_process_killed_between_write_and_replace_keeps_the_old_file(tmp_path):
    """A real crash: the process dies (os._exit) right after the temporary file is written."""
    target = tmp_path / "last.ckpt"
    AtomicCheckpointIO().save_checkpoint({"w": torch.zeros(3)}, target)
    script = textwrap.dedent(f"""
        import os, torch
        from transferkit.runtime.checkpoint_io import AtomicCheckpointIO
        os.replace = lambda src, dst: os._exit(9)
        AtomicCheckpointIO().save_checkpoint({{"w": torch.ones(3)}}, {str(target)!r})
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 9, done.stderr
    assert torch.equal(torch.load(target, weights_only=True)["w"], torch.zeros(3))
    assert len(temp_files(tmp_path)) == 1  # the new data never replaced the old file
    dead = temp_files(tmp_path)
    mine = tmp_path / f".best.ckpt.{os.getpid()}.1.tmp"  # a live writer's temporary file stays
    mine.write_bytes(b"half")
    assert remove_stale_temps(tmp_path) == dead and temp_files(tmp_path) == [mine]


def test_async_checkpoint_io_wraps_the_atomic_one(tmp_path):
    io = AsyncCheckpointIO(AtomicCheckpointIO())
    for value in range(3):
        io.save_checkpoint({"w": torch.full((2,), float(value))}, tmp_path / "last.ckpt")
    io.teardown()  # waits for the writer thread
    assert torch.equal(torch.load(tmp_path / "last.ckpt", weights_only=True)["w"], torch.full((2,), 2.0))
    assert temp_files(tmp_path) == []
    kept = build_plugins({"plugins": [io]})
    assert kept == [io]  # a CheckpointIO the user gave is kept, not doubled
    default = build_plugins({})[0]
    assert isinstance(default, AsyncCheckpointIO) and isinstance(default.checkpoint_io, AtomicCheckpointIO)


@pytest.mark.slow
def test_fit_writes_checkpoints_in_the_background_and_waits_for_them(fast, tmp_path, monkeypatch):
    """Every write of a fit run goes through the writer thread, and all are on disk, whole, when
    results.json says completed."""
    from transferkit.cli import app as cli
    writes = []
    save = AtomicCheckpointIO.save_checkpoint

    def slow_save(self, checkpoint, path, storage_options=None):
        import threading
        import time

        writes.append((Path(path).name, threading.current_thread().name))
        time.sleep(0.3)  # a slow disk: fit must still wait for this write
        save(self, checkpoint, path, storage_options)

    monkeypatch.setattr(AtomicCheckpointIO, "save_checkpoint", slow_save)
    results = cli.run(["fit", *fast, "trainer.max_epochs=2", "finetune=full", "finetune.lpft=false",
                       "data.train_per_class=2", "calibration=none"])  # the temperature is written after fit, in the main thread
    run_dir = Path(results["run_dir"])
    assert json.loads((run_dir / "results.json").read_text())["status"] == "completed"
    names = {name for name, _ in writes}
    assert names == {"best.ckpt", "last.ckpt"} and len(writes) >= 3
    assert all(thread != "MainThread" for _, thread in writes)
    for name in names:
        assert checkpoint_problem(run_dir / "checkpoints" / name) is None
    assert temp_files(run_dir / "checkpoints") == []


def test_checkpoint_problems_are_named(tmp_path):
    good = tmp_path / "best.ckpt"
    torch.save({"epoch": 2, "global_step": 9, "w": torch.zeros(1000)}, good)
    assert checkpoint_problem(good) is None
    empty = tmp_path / "empty.ckpt"
    empty.write_bytes(b"")
    cut = tmp_path / "last.ckpt"
    cut.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    assert checkpoint_problem(empty) == "is empty (0 bytes)"
    assert "truncated" in checkpoint_problem(cut)
    assert checkpoint_problem(tmp_path / "missing.ckpt") == "does not exist"
    line = describe_bad_checkpoint(cut, checkpoint_problem(cut), good)
    assert "\n" not in line and str(cut) in line and f"previous good checkpoint is {good} (after epoch 2)" in line
    assert "no good checkpoint" in describe_bad_checkpoint(cut, "is truncated", empty)


def record_durability_calls(monkeypatch) -> list[tuple]:
    """Spy on what makes a save durable: `("fsync", "file"|"dir", path, size)` and `("replace", src, dst)`."""
    import stat

    calls: list[tuple] = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd):
        info = os.fstat(fd)
        kind = "dir" if stat.S_ISDIR(info.st_mode) else "file"
        calls.append(("fsync", kind, os.readlink(f"/proc/self/fd/{fd}"), info.st_size))
        return real_fsync(fd)

    def replace(src, dst, **kwargs):
        calls.append(("replace", str(src), str(dst)))
        return real_replace(src, dst, **kwargs)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    return calls


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="needs /proc to name a file descriptor")
def test_a_save_fsyncs_the_whole_file_then_renames_then_fsyncs_the_folder(tmp_path, monkeypatch):
    """The order that makes a checkpoint survive a power cut: the data on disk (fsync of the full
    temporary file), then the rename, then the rename itself on disk (fsync of the folder)."""
    target = tmp_path / "checkpoints" / "last.ckpt"
    calls = record_durability_calls(monkeypatch)
    AtomicCheckpointIO().save_checkpoint({"w": torch.arange(1000)}, target)
    assert [c[:2] for c in calls] == [("fsync", "file"), ("replace", calls[1][1]), ("fsync", "dir")], calls
    (_, _, synced, size), (_, src, dst), (_, _, folder, _) = calls
    assert synced == src and Path(src).parent == target.parent and dst == str(target)
    assert size == target.stat().st_size  # fsynced after every byte was written (and flushed)
    assert folder == str(target.parent)


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("strace") is None, reason="strace is not installed")
def test_strace_sees_fsync_rename_fsync_folder_in_that_order(tmp_path):
    """The same order seen by the kernel (`strace -f`): no mock stands between the code and the calls."""
    target = tmp_path / "last.ckpt"
    trace = tmp_path / "trace.txt"
    script = ("import torch; from transferkit.runtime.checkpoint_io import AtomicCheckpointIO; "
              f"AtomicCheckpointIO().save_checkpoint({{'w': torch.arange(1000)}}, {str(target)!r})")
    done = subprocess.run(["strace", "-f", "-y", "-qq", "-o", str(trace), "-e",
                           "trace=fsync,fdatasync,rename,renameat,renameat2", sys.executable, "-c", script],
                          capture_output=True, text=True, timeout=300)
    if done.returncode != 0 and "ptrace" in done.stderr:
        pytest.skip(f"strace cannot trace here: {done.stderr.strip()[:200]}")
    assert done.returncode == 0, done.stderr[-2000:]
    events = []
    for line in trace.read_text().splitlines():
        call = re.search(r"\b(fsync|fdatasync|rename|renameat|renameat2)\((.*)\)\s*=\s*0", line)
        if call is None:
            continue
        name, args = call.groups()
        if name.startswith("rename"):
            events.append(("rename", re.findall(r'"([^"]*)"', args)))
        else:
            events.append(("fsync", re.search(r"<([^>]*)>", args).group(1)))
    temp = f".{target.name}."
    assert [e[0] for e in events] == ["fsync", "rename", "fsync"], events
    (_, synced), (_, (src, dst)), (_, folder) = events
    assert Path(synced).name.startswith(temp) and synced.endswith(".tmp")
    assert Path(src).name == Path(synced).name and dst == str(target)
    assert folder == str(tmp_path)
