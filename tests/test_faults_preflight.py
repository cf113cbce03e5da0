"""Before any training: a run directory that cannot be written (a read-only mount: `chmod` does not stop
root) or that has no room for the run's checkpoints stops the run in one line naming the folder, the
free space and what is needed."""

from __future__ import annotations

import errno
import json
import subprocess

import pytest
import torch

from tests.test_faults_disk import child_env, fit_command, mount_tmpfs
from transferkit.runtime.disk import DiskFullError, NotWritableError, check_writable, human_bytes
from transferkit.runtime.preflight import (COPIES_AT_PEAK, check_room, estimate_checkpoint_bytes, optimizer_slots,
                                           preflight_run_dir)


@pytest.fixture
def read_only_dir(tmp_path):
    folder = tmp_path / "ro"
    mount_tmpfs(folder, "1m")
    subprocess.run(["mount", "-o", "remount,ro", str(folder)], check=True)
    yield folder
    subprocess.run(["umount", "-l", str(folder)], capture_output=True)


def test_a_read_only_mount_is_not_writable_even_for_root(read_only_dir, tmp_path):
    with pytest.raises(NotWritableError) as info:
        check_writable(read_only_dir / "run" / "deeper")  # not made yet: its nearest existing parent counts
    line = str(info.value)
    assert line.startswith(f"run_dir='{read_only_dir / 'run' / 'deeper'}' cannot be written: {read_only_dir} is "
                           "a read-only file system") and "\n" not in line
    assert info.value.errno == errno.EROFS and info.value.exit_code == 1
    check_writable(tmp_path / "not" / "yet")  # a writable place passes, and nothing is left in it
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ro"]


def test_no_room_for_the_checkpoints_is_told_before_training(tmp_path):
    with pytest.raises(DiskFullError) as info:
        check_room(tmp_path, 10**17)  # 100 PB a checkpoint: no disk has room
    line = str(info.value)
    assert line.startswith(f"not enough disk space for this run: {tmp_path} has ") and "\n" not in line
    assert f"need about {human_bytes(COPIES_AT_PEAK * 10**17)} more" in line and "100000.0 TB each" in line
    preflight_run_dir(tmp_path / "run", 1000)  # room for three of 1 KB
    (tmp_path / "last.ckpt").write_bytes(b"x" * 4000)
    check_room(tmp_path, 2000)  # a resumed run's last.ckpt is rewritten in place: counted as room


def test_the_checkpoint_estimate_counts_weights_and_optimizer_state():
    model = torch.nn.Sequential(torch.nn.Linear(100, 10), torch.nn.BatchNorm1d(10))
    model[0].bias.requires_grad_(False)
    weights = (100 * 10 + 10 + 10 * 4) * 4 + 8  # the BatchNorm's running stats and its int64 batch count
    trainable = (100 * 10 + 10 * 2) * 4
    assert estimate_checkpoint_bytes(model, slots=2) == weights + 2 * trainable
    assert optimizer_slots([torch.optim.SGD(model.parameters(), lr=0.1)]) == 1
    assert optimizer_slots([torch.optim.AdamW(model.parameters())]) == 2 and optimizer_slots([]) == 0


@pytest.mark.slow
def test_fit_into_a_read_only_folder_stops_before_training_in_one_line(read_only_dir, image_folder,
                                                                       test_resnet_weights):
    run_dir = read_only_dir / "run"
    done = subprocess.run(fit_command(image_folder, test_resnet_weights, run_dir, "trainer.max_epochs=1"),
                          capture_output=True, text=True, env=child_env(), timeout=300)
    assert done.returncode == 1, done.stderr[-3000:]
    lines = [line for line in done.stderr.splitlines() if "cannot be written" in line]
    assert len(lines) == 1 and "Traceback" not in done.stderr and "epoch 1/" not in done.stderr, done.stderr[-3000:]
    assert lines[0] == (f"transferkit: failed: run_dir='{run_dir}' cannot be written: {read_only_dir} is a read-only "
                        "file system (Read-only file system), so the run could save nothing; point run_dir= at a "
                        "writable folder.")


@pytest.mark.slow
def test_fit_onto_a_disk_too_small_for_its_checkpoints_stops_before_training(tmp_path, image_folder,
                                                                             test_resnet_weights):
    """A 6 MB tmpfs; a full fine-tune of test_resnet writes checkpoints of 4.6 MB (three at the peak)."""
    disk = tmp_path / "small"
    mount_tmpfs(disk, "6m")
    try:
        run_dir = disk / "run"
        done = subprocess.run(fit_command(image_folder, test_resnet_weights, run_dir, "trainer.max_epochs=1"),
                              capture_output=True, text=True, env=child_env(), timeout=300)
        assert done.returncode == 1, done.stderr[-3000:]
        lines = [line for line in done.stderr.splitlines() if "not enough disk space" in line]
        assert len(lines) == 1 and "Traceback" not in done.stderr and "epoch 1/" not in done.stderr, done.stderr[-3000:]
        assert f"{run_dir / 'checkpoints'} has " in lines[0] and "free, and its checkpoints need about 13." in lines[0]
        assert not (run_dir / "checkpoints").is_dir() or not any((run_dir / "checkpoints").iterdir())
        assert json.loads((run_dir / "results.json").read_text())["status"] == "failed"
    finally:
        subprocess.run(["umount", "-l", str(disk)], capture_output=True)
