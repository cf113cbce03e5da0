"""One writer per run directory: an OS lock (`fcntl.flock`) held by the process that writes the run; a
second writer stops at once naming the holder's pid and host; a dead holder's lock is taken over."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tests.test_faults_disk import child_env, fit_command
from transferkit.runtime.lock import (LOCK_FILE, RunDirBusyError, acquire_run_lock, holds_run_lock, read_holder,
                                      release_run_lock)
from transferkit.training.rundir import lock_run_dir, reuse_run_dir, unlock_run_dir, writes_the_run

pytestmark = pytest.mark.skipif(os.name != "posix", reason="flock is POSIX")

HOLD = textwrap.dedent("""
    import sys, time
    from transferkit.runtime.lock import acquire_run_lock
    acquire_run_lock(sys.argv[1])
    print("locked", flush=True)
    time.sleep(120)
""")


def start_holder(run_dir: Path) -> subprocess.Popen:
    """Another process that holds `run_dir`'s lock (and says so on stdout once it does)."""
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(run_dir)], stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "locked"
    return holder


def test_a_held_run_directory_is_refused_naming_the_holder_and_a_dead_holder_is_taken_over(tmp_path):
    holder = start_holder(tmp_path)
    try:
        with pytest.raises(RunDirBusyError, match=rf"resume={tmp_path}: the run is still going \(pid {holder.pid},"):
            acquire_run_lock(tmp_path)
        assert not holds_run_lock(tmp_path)
    finally:
        holder.send_signal(signal.SIGKILL)  # dies holding it: the kernel drops the lock
        holder.wait()
    acquire_run_lock(tmp_path)
    try:
        assert holds_run_lock(tmp_path) and read_holder(tmp_path)["pid"] == os.getpid()
        acquire_run_lock(tmp_path)  # this process again: nothing to do
        other = subprocess.run([sys.executable, "-c", HOLD, str(tmp_path)], capture_output=True, text=True,
                               timeout=120)
        assert other.returncode == 1 and f"still going (pid {os.getpid()}," in other.stderr
    finally:
        release_run_lock(tmp_path)
    assert not holds_run_lock(tmp_path) and (tmp_path / LOCK_FILE).is_file()


def test_resuming_a_directory_another_process_writes_stops_before_anything_is_written(tmp_path):
    (tmp_path / "results.json").write_text(json.dumps({"status": "completed"}))
    holder = start_holder(tmp_path)
    try:
        with pytest.raises(RunDirBusyError, match=f"pid {holder.pid}") as info:
            reuse_run_dir(str(tmp_path))
        assert info.value.holder["pid"] == holder.pid and "kill -TERM" in str(info.value)
        assert json.loads((tmp_path / "results.json").read_text()) == {"status": "completed"}
    finally:
        holder.kill()
        holder.wait()
    assert reuse_run_dir(str(tmp_path)) == tmp_path.resolve()
    unlock_run_dir(tmp_path)


@pytest.mark.parametrize(("env", "writes"), [
    ({}, True), ({"RANK": "0", "LOCAL_RANK": "0", "NODE_RANK": "0"}, True), ({"RANK": "3"}, False),
    ({"NODE_RANK": "1"}, False), ({"SLURM_PROCID": "2"}, False),
    ({"LOCAL_RANK": "1", "TRANSFERKIT_RUN_DIR": "/somewhere"}, False),  # a worker Lightning started
])
def test_only_global_rank_zero_takes_the_lock(env, writes, monkeypatch, tmp_path):
    for key in ("RANK", "LOCAL_RANK", "NODE_RANK", "SLURM_PROCID", "TRANSFERKIT_RUN_DIR"):
        monkeypatch.delenv(key, raising=False)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    assert writes_the_run() is writes
    lock_run_dir(tmp_path)
    assert holds_run_lock(tmp_path) is writes
    unlock_run_dir(tmp_path)


@pytest.mark.slow
def test_two_resumes_started_together_one_trains_the_other_stops_naming_it(image_folder, test_resnet_weights,
                                                                         tmp_path):
    run_dir = tmp_path / "run"
    first = subprocess.run(fit_command(image_folder, test_resnet_weights, run_dir, "trainer.max_epochs=1"),
                           capture_output=True, text=True, env=child_env(), timeout=300)
    assert first.returncode == 0, first.stderr[-3000:]
    resume = [sys.executable, "-m", "transferkit", "fit", f"resume={run_dir}", "trainer.max_epochs=8"]
    both = [subprocess.Popen(resume, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=child_env())
            for _ in range(2)]
    outcomes = [(proc.pid, *proc.communicate(timeout=300)[1:], proc.returncode) for proc in both]
    won = [(pid, err) for pid, err, code in outcomes if code == 0]
    lost = [(pid, err) for pid, err, code in outcomes if code != 0]
    assert len(won) == 1 and len(lost) == 1, [(pid, code, err[-1500:]) for pid, err, code in outcomes]
    lines = [line for line in lost[0][1].splitlines() if "still going" in line]
    assert len(lines) == 1 and f"resume={run_dir}: the run is still going (pid {won[0][0]}," in lines[0], lost[0][1]
    record = json.loads((run_dir / "results.json").read_text())
    assert record["status"] == "completed" and len(record["resumes"]) == 1  # one writer resumed it
