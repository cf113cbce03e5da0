"""`checkpoint.every_minutes`: a mid-epoch checkpoint that `fit resume=...` continues from when it is
the newest. The clock is injected, so no test depends on how long a step takes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from transferkit.cli import app as cli
from transferkit.errors import ConfigError
from transferkit.planning import resume as resuming
from transferkit.runtime.interval_checkpoint import MID_EPOCH, IntervalCheckpoint, check_every_minutes
from transferkit.training import builders


class Minutes:
    """A clock that moves one minute each time it is read."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        self.now += 60.0
        return self.now


@pytest.mark.parametrize("value", [0, -1, "often", True])
def test_every_minutes_must_be_a_positive_number(value) -> None:
    with pytest.raises(ConfigError, match=r"checkpoint\.every_minutes=.* is not a positive number of minutes"):
        check_every_minutes(value)
    assert check_every_minutes(None) is None and check_every_minutes(1) == 60 / 60


def test_every_minutes_defaults_to_null_and_may_be_set_when_resuming(tmp_path: Path) -> None:
    assert cli.compose_config([]).checkpoint.every_minutes is None
    assert resuming.check_overrides(["checkpoint.every_minutes=30"], tmp_path) == ["checkpoint.every_minutes"]


def save(path: Path, step: int) -> None:
    torch.save({"state_dict": {}, "global_step": step, "epoch": 0}, path)


def test_resume_takes_the_mid_epoch_checkpoint_only_when_it_is_newer_and_whole(tmp_path: Path) -> None:
    checkpoints = tmp_path / "checkpoints"
    checkpoints.mkdir()
    last, mid = checkpoints / "last.ckpt", checkpoints / MID_EPOCH
    save(mid, 3)
    assert resuming.check_checkpoint(tmp_path) == mid  # died in its first epoch, after a mid-epoch save
    save(last, 2)
    assert resuming.check_checkpoint(tmp_path) == mid
    save(last, 4)
    assert resuming.check_checkpoint(tmp_path) == last
    save(last, 2)
    mid.write_bytes(mid.read_bytes()[:100])  # torn (cannot happen through AtomicCheckpointIO): ignored
    assert resuming.check_checkpoint(tmp_path) == last


class PowerCut(builders.pl.Callback):
    """Stops the fit like a crash (not a signal: no checkpoint is saved) before epoch 2's second step."""

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.current_epoch == 1 and batch_idx == 1:
            raise RuntimeError("power cut")


@pytest.mark.slow
def test_a_run_that_dies_mid_epoch_resumes_from_its_mid_epoch_checkpoint(image_folder, fast, tmp_path, monkeypatch):
    monkeypatch.setattr(builders, "IntervalCheckpoint",
                        lambda dirpath, every_minutes: IntervalCheckpoint(dirpath, every_minutes, clock=Minutes()))
    guards = builders.run_guard_callbacks
    monkeypatch.setattr(builders, "run_guard_callbacks", lambda d: [*guards(d), PowerCut()])
    args = ["fit", f"data.root={image_folder}", *fast, "finetune=full", "trainer.max_epochs=3",
            "checkpoint.every_minutes=1"]
    with pytest.raises(RuntimeError, match="power cut"):
        cli.run(args)
    checkpoints = tmp_path / "run" / "checkpoints"
    last = torch.load(checkpoints / "last.ckpt", map_location="cpu", weights_only=True)
    mid = torch.load(checkpoints / MID_EPOCH, map_location="cpu", weights_only=True)
    steps_per_epoch = last["global_step"]  # last.ckpt: the end of epoch 1
    assert steps_per_epoch >= 2 and mid["global_step"] == steps_per_epoch + 1  # one step into epoch 2
    assert not list(checkpoints.glob(".*.tmp"))

    monkeypatch.setattr(builders, "run_guard_callbacks", guards)
    resumed = cli.run(["fit", f"resume={tmp_path / 'run'}"])
    record = json.loads((tmp_path / "run" / "results.json").read_text())
    assert record["status"] == "completed" and resumed["epochs"] == 3
    assert record["resumes"][0]["checkpoint"] == f"checkpoints/{MID_EPOCH}"  # relative to the run (run_paths.py)
    assert record["resumes"][0]["global_step"] == steps_per_epoch + 1
    final = torch.load(checkpoints / "last.ckpt", map_location="cpu", weights_only=True)
    assert final["global_step"] == 3 * steps_per_epoch  # the rest of epoch 2, then epoch 3
    assert not (checkpoints / MID_EPOCH).exists()  # a finished fit leaves no stale mid-epoch checkpoint


@pytest.mark.slow
def test_ddp_ranks_take_interval_checkpoints_together(image_folder, test_resnet_weights, tmp_path: Path) -> None:
    """Rank 0's clock decides for both ranks (agreed over a host-side group): no rank waits alone."""
    from tests.conftest import fit_two_process_ddp

    proc = fit_two_process_ddp(image_folder, test_resnet_weights, tmp_path, "trainer.max_epochs=1", "finetune=full",
                               "checkpoint.every_minutes=0.0001", f"run_dir={tmp_path / 'run'}",
                               "trainer.enable_progress_bar=false")
    assert "(checkpoint.every_minutes)" in proc.stderr + proc.stdout
    assert not (tmp_path / "run" / "checkpoints" / MID_EPOCH).exists()  # stale once the fit finished
