"""A full disk or a file-size limit while a checkpoint is written: the previous checkpoint stays whole, the
run fails with one line naming the folder, its free space and the bytes needed, and resumes once there
is room (the real `EFBIG` of a lowered RLIMIT_FSIZE, and a small tmpfs where this machine may mount one)."""

from __future__ import annotations

import errno
import json
import os
import resource
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

from transferkit.runtime.checkpoint_io import AtomicCheckpointIO, checkpoint_problem
from transferkit.runtime.disk import DiskFullError, full_errno, human_bytes

SAVE_UNDER_LIMIT = textwrap.dedent("""
    import resource, sys, torch
    from transferkit.runtime.checkpoint_io import AtomicCheckpointIO
    from transferkit.runtime.disk import DiskFullError
    target = sys.argv[1]
    AtomicCheckpointIO().save_checkpoint({"w": torch.zeros(1000)}, target)
    resource.setrlimit(resource.RLIMIT_FSIZE, (20_000, resource.RLIM_INFINITY))
    try:
        AtomicCheckpointIO().save_checkpoint({"w": torch.ones(100_000)}, target)
    except DiskFullError as err:
        print(err.errno, err)
        sys.exit(7)
""")


@pytest.mark.slow
def test_a_save_past_the_file_size_limit_raises_one_line_and_keeps_the_old_file(tmp_path):
    target = tmp_path / "checkpoints" / "last.ckpt"
    done = subprocess.run([sys.executable, "-c", SAVE_UNDER_LIMIT, str(target)], capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 7, done.stderr[-2000:]
    code, line = done.stdout.strip().split(" ", 1)
    assert int(code) == errno.EFBIG and "\n" not in line
    assert line.startswith("file-size limit hit while writing last.ckpt: the checkpoint needs about 400.0 KB")
    assert "at most 20.0 KB (ulimit -f)" in line and f"{target.parent} has " in line and " free" in line
    assert torch.equal(torch.load(target, weights_only=True)["w"], torch.zeros(1000))
    assert sorted(p.name for p in target.parent.iterdir()) == ["last.ckpt"]  # no temporary file left


def test_a_full_disk_is_told_with_the_folder_free_space_and_size(tmp_path, monkeypatch):
    target = tmp_path / "last.ckpt"
    io = AtomicCheckpointIO()
    io.save_checkpoint({"w": torch.zeros(10)}, target)
    old = target.read_bytes()

    def full(obj, handle, *args, **kwargs):
        handle.write(b"half a checkpoint")
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 704 vs 598") from \
            OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(torch, "save", full)
    with pytest.raises(DiskFullError) as info:
        io.save_checkpoint({"w": torch.ones(250_000)}, target)
    line = str(info.value)
    assert line.startswith(f"disk full while writing last.ckpt: {tmp_path} has ") and "\n" not in line
    assert "the checkpoint needs about 1.0 MB" in line and "The previous last.ckpt is intact" in line
    assert info.value.status == "failed" and info.value.exit_code == 1 and info.value.errno == errno.ENOSPC
    assert target.read_bytes() == old and sorted(tmp_path.iterdir()) == [target]
    with pytest.raises(DiskFullError, match="No checkpoint was saved yet: start the run again once there is room"):
        io.save_checkpoint({"w": torch.ones(10)}, tmp_path / "best.ckpt")  # the first save of a run


def test_only_writes_out_of_room_count_as_a_full_disk(tmp_path):
    assert full_errno(OSError(errno.EDQUOT, "quota")) == errno.EDQUOT
    assert full_errno(OSError(errno.EACCES, "denied")) is None
    assert full_errno(RuntimeError("something else")) is None
    torch_error = RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 1 vs 2")
    assert full_errno(torch_error, needed=1, folder=tmp_path) is None  # there is room: not a full disk
    assert full_errno(torch_error, needed=10**18, folder=tmp_path) == errno.ENOSPC
    assert [human_bytes(n) for n in (999, 34_554_816, 3 * 10**12)] == ["999 B", "34.6 MB", "3.0 TB"]


def fit_command(image_folder: Path, weights: Path, run_dir: Path | str, *extra: str) -> list[str]:
    return [sys.executable, "-m", "transferkit", "fit", f"data.root={image_folder}", "model.backbone=test_resnet",
            f"model.weights={weights}", "model.in_chans=3", "data.image_size=32", "data.batch_size=2",
            "data.num_workers=0", "trainer.accelerator=cpu", "trainer.devices=1", "finetune=full",
            "trainer.enable_progress_bar=false", f"run_dir={run_dir}", *extra]


def child_env() -> dict:
    env = {**os.environ, "NO_ALBUMENTATIONS_UPDATE": "1", "OMP_NUM_THREADS": "1"}
    env.pop("TRANSFERKIT_RUN_DIR", None)
    return env


def wait_for(path: Path, process: subprocess.Popen, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert process.poll() is None, f"the run ended (exit {process.returncode}) before {path} appeared"
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.05)


def check_failed_in_one_line(run_dir: Path, stderr: str, words: str) -> dict:
    """The run failed with exit 1 and one line; last.ckpt whole and loadable, no temporary file."""
    lines = [line for line in stderr.splitlines() if words in line]
    assert len(lines) == 1 and "Traceback" not in stderr, stderr[-3000:]
    checkpoints = run_dir / "checkpoints"
    assert f"{checkpoints} has " in lines[0] and "the checkpoint needs about " in lines[0]
    assert f"resume with: python -m transferkit fit resume={run_dir}" in lines[0]
    assert checkpoint_problem(checkpoints / "last.ckpt") is None
    state = torch.load(checkpoints / "last.ckpt", map_location="cpu", weights_only=True)
    assert not list(checkpoints.glob(".*.tmp")), list(checkpoints.iterdir())
    record = json.loads((run_dir / "results.json").read_text())
    assert record["status"] == "failed" and record["message"] == lines[0].split(": ", 2)[-1], record
    return state


@pytest.mark.slow
def test_a_file_size_limit_hit_mid_run_fails_in_one_line_and_the_run_resumes(image_folder, test_resnet_weights,
                                                                            tmp_path):
    """A real EFBIG: the running fit's RLIMIT_FSIZE is lowered after its first checkpoint (SIGXFSZ, which
    would kill a C program, is ignored by every CPython process from its start)."""
    run_dir, out, err = tmp_path / "run", tmp_path / "out.txt", tmp_path / "err.txt"
    with out.open("w") as stdout, err.open("w") as stderr:
        process = subprocess.Popen(fit_command(image_folder, test_resnet_weights, run_dir, "trainer.max_epochs=1000"),
                                   stdout=stdout, stderr=stderr, env=child_env())
    try:
        last = run_dir / "checkpoints" / "last.ckpt"
        wait_for(last, process)
        limit = last.stat().st_size // 2  # any later checkpoint is larger than this
        resource.prlimit(process.pid, resource.RLIMIT_FSIZE, (limit, limit))
        process.wait(timeout=300)
    finally:
        process.kill()
        process.wait()
    assert process.returncode == 1, err.read_text()[-3000:]
    state = check_failed_in_one_line(run_dir, err.read_text(), "file-size limit hit while writing ")
    assert f"at most {human_bytes(limit)} (ulimit -f)" in err.read_text()
    done = state["epoch"] + 1  # the epochs in the intact last.ckpt (saved at an epoch end)
    resume = [sys.executable, "-m", "transferkit", "fit", f"resume={run_dir}", f"trainer.max_epochs={done + 1}"]
    again = subprocess.run(resume, capture_output=True, text=True, env=child_env(), timeout=300)
    assert again.returncode == 0, again.stderr[-3000:]
    record = json.loads((run_dir / "results.json").read_text())
    assert record["status"] == "completed" and record["resumes"][-1]["epochs_done"] == done, record


def mount_tmpfs(folder: Path, size: str) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)], capture_output=True,
                          text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root or CAP_SYS_ADMIN): {done.stderr.strip()[:200]}")


@pytest.mark.slow
def test_a_tmpfs_too_small_for_the_checkpoints_stops_before_training_in_one_line(image_folder,
                                                                                 test_resnet_weights, tmp_path):
    """The run directory on a 12 MB tmpfs: best.ckpt, last.ckpt and one being written (4.5 MB each) do not
    fit, so the preflight stops the run before its first step (a mid-run full disk: the EFBIG test above);
    with room made, the same command trains."""
    disk = tmp_path / "disk"
    mount_tmpfs(disk, "12m")
    try:
        run_dir = disk / "run"
        command = fit_command(image_folder, test_resnet_weights, run_dir, "trainer.max_epochs=2")
        done = subprocess.run(command, capture_output=True, text=True, env=child_env(), timeout=300)
        assert done.returncode == 1, done.stderr[-3000:]
        lines = [line for line in done.stderr.splitlines() if line.startswith("transferkit:")]
        assert len(lines) == 1 and "Traceback" not in done.stderr, done.stderr[-3000:]
        assert "not enough disk space" in lines[0] and str(run_dir / "checkpoints") in lines[0]
        assert "MB free" in lines[0] and "need about" in lines[0]
        assert not list((run_dir / "checkpoints").glob("*.ckpt"))  # nothing trained, nothing half-written
        subprocess.run(["mount", "-o", "remount,size=64m", str(disk)], check=True)  # room made
        again = subprocess.run(fit_command(image_folder, test_resnet_weights, disk / "run2", "trainer.max_epochs=2"),
                               capture_output=True, text=True, env=child_env(), timeout=300)
        assert again.returncode == 0, again.stderr[-3000:]
        assert json.loads((disk / "run2" / "results.json").read_text())["status"] == "completed"
    finally:
        subprocess.run(["umount", "-l", str(disk)], capture_output=True)
