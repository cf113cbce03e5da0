"""Runs that die: SIGTERM/SIGINT save a resumable checkpoint and exit 143/130 with the resume command;
a non-finite loss stops the run (exit 3) before any checkpoint is written from the diverged model."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from transferkit.cli import app as cli
from transferkit.runtime.guards import EXIT_DIVERGED, RunDiverged
from transferkit.tasks.classification import ClassificationTask

pytestmark = pytest.mark.slow


def test_nan_loss_stops_the_run_names_step_lr_and_last_good_checkpoint(image_folder, fast, tmp_path,
                                                                      monkeypatch, capsys):
    real_step = ClassificationTask.training_step

    def nan_in_epoch_two(self, batch, batch_idx):
        loss = real_step(self, batch, batch_idx)
        return loss * float("nan") if self.current_epoch == 1 else loss

    monkeypatch.setattr(ClassificationTask, "training_step", nan_in_epoch_two)
    args = ["fit", f"data.root={image_folder}", *fast, "trainer.max_epochs=3", "finetune=full"]
    with pytest.raises(SystemExit) as exited:
        cli.main(args)
    assert exited.value.code == EXIT_DIVERGED == 3
    run_dir = tmp_path / "run"
    checkpoints = run_dir / "checkpoints"
    line = capsys.readouterr().err.strip().splitlines()[-1]
    assert line.startswith("transferkit: diverged: training loss is nan at step ")
    assert f"the last good checkpoint is {checkpoints / 'last.ckpt'} (after epoch 1)" in line and " with lr " in line
    record = json.loads((run_dir / "results.json").read_text())
    assert record["status"] == "diverged" and record["exit_code"] == 3
    assert record["diverged"]["epoch"] == 2 and record["diverged"]["loss"] == "nan"
    for name in ("best.ckpt", "last.ckpt"):  # written after epoch 1, never by the diverged model
        saved = torch.load(checkpoints / name, map_location="cpu", weights_only=True)
        assert saved["epoch"] == 0 and all(torch.isfinite(v).all() for v in saved["state_dict"].values())


def test_a_huge_learning_rate_diverges_with_exit_code_3(image_folder, fast):
    with pytest.raises(RunDiverged, match=r"training loss is (nan|inf|-inf) at step \d+ .* with lr "):
        cli.run(["fit", f"data.root={image_folder}", *fast, "finetune=full", "optimizer.lr=1e6",
                 "trainer.max_epochs=20"])


def start_fit(image_folder: Path, weights: Path, run_dir: Path, log: Path) -> subprocess.Popen:
    env = {**os.environ, "NO_ALBUMENTATIONS_UPDATE": "1", "OMP_NUM_THREADS": "1"}
    env.pop("TRANSFERKIT_RUN_DIR", None)
    cmd = [sys.executable, "-m", "transferkit", "fit", f"data.root={image_folder}", "model.backbone=test_resnet",
           f"model.weights={weights}", "model.in_chans=3", "data.image_size=32", "data.batch_size=2",
           "data.num_workers=0", "trainer.accelerator=cpu", "trainer.devices=1", "trainer.max_epochs=1000",
           "finetune=full", "trainer.enable_progress_bar=false", f"run_dir={run_dir}"]
    with log.open("w") as out:  # a file, not a pipe: a full pipe would block the run
        return subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env)


def wait_for(path: Path, process: subprocess.Popen, log: Path, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert process.poll() is None, log.read_text()[-3000:]
        assert time.monotonic() < deadline, f"{path} never appeared:\n{log.read_text()[-3000:]}"
        time.sleep(0.05)


@pytest.mark.parametrize(("sig", "code"), [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_a_signal_saves_last_checkpoint_exits_and_the_run_resumes(sig, code, image_folder, test_resnet_weights,
                                                                  tmp_path):
    run_dir, log = tmp_path / "run", tmp_path / "log.txt"
    process = start_fit(image_folder, test_resnet_weights, run_dir, log)
    try:
        wait_for(run_dir / "checkpoints" / "last.ckpt", process, log)  # the first epoch has ended
        process.send_signal(sig)
        assert process.wait(timeout=300) == code, log.read_text()[-3000:]
    finally:
        process.kill()
    text = log.read_text()
    assert f"resume it with: python -m transferkit fit resume={run_dir.resolve()}" in text
    record = json.loads((run_dir / "results.json").read_text())
    assert record["status"] == "interrupted" and record["signal"] == sig.name and record["exit_code"] == code
    saved = torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert saved["global_step"] == record["global_step"] >= 3  # saved at the signal, after the first epoch
    assert not list((run_dir / "checkpoints").glob(".*.tmp"))
    if sig == signal.SIGTERM:  # the same run continues, in place
        resumed = cli.run(["fit", f"resume={run_dir}", f"trainer.max_epochs={record['epochs_done'] + 1}"])
        assert resumed["status"] == "completed" and resumed["run_dir"] == str(run_dir.resolve())


SIGTERM_AT_STEP = '''
import os, signal, sys
import pytorch_lightning as pl
from transferkit.training import builders
from transferkit.cli import app as cli
class SigtermAtStep(pl.Callback):
    """Rank 0 (the launcher) gets SIGTERM once, after training step {step}."""
    def on_train_batch_end(self, trainer, *args):
        if trainer.global_rank == 0 and trainer.global_step == {step} and not getattr(self, "sent", False):
            self.sent = True
            os.kill(os.getpid(), signal.SIGTERM)

guards = builders.run_guard_callbacks
builders.run_guard_callbacks = lambda folder: [*guards(folder), SigtermAtStep()]
cli.main(sys.argv[1:])
'''


def processes_mentioning(text: str) -> list[int]:
    found = []
    for proc in Path("/proc").iterdir():
        try:
            if proc.name.isdigit() and text in (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode():
                found.append(int(proc.name))
        except OSError:
            continue
    return found


@pytest.mark.skipif(not Path("/proc").is_dir(), reason="lists processes through /proc")
def test_one_sigterm_stops_every_ddp_rank_and_the_run_resumes(image_folder, test_resnet_weights, tmp_path):
    """The wrapper script (Lightning re-launches it for rank 1) sends SIGTERM to rank 0 only."""
    script, run_dir = tmp_path / "sigterm_at_step.py", tmp_path / "ddp"
    script.write_text(SIGTERM_AT_STEP.format(step=3))
    env = {**os.environ, "NO_ALBUMENTATIONS_UPDATE": "1", "OMP_NUM_THREADS": "1"}
    env.pop("TRANSFERKIT_RUN_DIR", None)
    common = [f"data.root={image_folder}", "model.backbone=test_resnet", f"model.weights={test_resnet_weights}",
              "data.image_size=32", "data.batch_size=2", "data.num_workers=0", "trainer.accelerator=cpu",
              "trainer.devices=2", "trainer.strategy=ddp", "finetune=full", "trainer.max_epochs=2",
              "trainer.enable_progress_bar=false", f"run_dir={run_dir}"]
    proc = subprocess.run([sys.executable, str(script), "fit", *common], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 143, proc.stderr[-3000:]
    assert f"resume it with: python -m transferkit fit resume={run_dir.resolve()}" in proc.stderr
    deadline = time.monotonic() + 30
    while processes_mentioning(str(script)) and time.monotonic() < deadline:  # rank 1 exits too
        time.sleep(0.2)
    assert processes_mentioning(str(script)) == []
    record = json.loads((run_dir / "results.json").read_text())
    assert record["status"] == "interrupted" and record["signal"] == "SIGTERM" and record["exit_code"] == 143
    saved = torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert saved["global_step"] == record["global_step"] >= 3 and not list(run_dir.glob("checkpoints/.*.tmp"))

    resumed = subprocess.run([sys.executable, "-m", "transferkit", "fit", f"resume={run_dir}"], cwd=tmp_path,
                             env=env, capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    final = json.loads((run_dir / "results.json").read_text())
    assert final["status"] == "completed" and final["epochs"] == 2 and final["resumes"][0]["global_step"] >= 3


class _DoneEvent:
    """Stands in for a CUDA event that has completed."""

    def query(self) -> bool:
        return True

    def synchronize(self) -> None:
        return None


def test_gpu_loss_check_reads_the_flag_a_step_late_and_names_that_step(tmp_path):
    from types import SimpleNamespace

    from transferkit.runtime.guards import FiniteLossGuard

    guard = FiniteLossGuard(tmp_path)
    trainer = SimpleNamespace(strategy=SimpleNamespace(checkpoint_io=None), is_last_batch=False)
    guard.pending.append((torch.tensor(True), _DoneEvent(), torch.tensor(0.5), (7, 1, [0.1])))
    guard.on_train_batch_end(trainer, None, None, None, 0)  # finite: nothing happens
    assert not guard.pending
    guard.pending.append((torch.tensor(False), _DoneEvent(), torch.tensor(float("nan")), (8, 1, [0.1])))
    with pytest.raises(RunDiverged, match="at step 8 .*stopped before the next checkpoint") as err:
        guard.on_train_epoch_end(trainer, None)
    assert err.value.record["step"] == 8 and not guard.pending


class _PendingEvent(_DoneEvent):
    """A CUDA event whose work has not run yet: polling skips it, waiting completes it."""

    def __init__(self) -> None:
        self.waited = False

    def query(self) -> bool:
        return self.waited

    def synchronize(self) -> None:
        self.waited = True


def test_gpu_loss_check_never_waits_between_steps_but_always_before_a_checkpoint(tmp_path):
    from types import SimpleNamespace

    from transferkit.runtime.guards import FiniteLossGuard

    guard = FiniteLossGuard(tmp_path)
    trainer = SimpleNamespace(strategy=SimpleNamespace(checkpoint_io=None), is_last_batch=False)
    landed, in_flight = _DoneEvent(), _PendingEvent()
    guard.pending.extend([(torch.tensor(True), landed, torch.tensor(0.5), (3, 1, [0.1])),
                          (torch.tensor(False), in_flight, torch.tensor(float("inf")), (4, 1, [0.1]))])
    guard.on_train_batch_end(trainer, None, None, None, 3)
    assert len(guard.pending) == 1 and not in_flight.waited  # read what landed, did not wait for the rest
    with pytest.raises(RunDiverged, match="at step 4 "):
        guard.on_save_checkpoint(trainer, None, {})  # a checkpoint waits for every flag first
    assert in_flight.waited and not guard.pending
