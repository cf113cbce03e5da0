"""kill -9 mid-epoch on a streamed, optimized data.root, then `fit resume=`: the run completes, and the optimizer
steps that survive in the final model cover each training sample of that epoch exactly once."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import write_class_folder
from tests.s3_store import s3_endpoint, s3_env, upload_folder  # noqa: F401

pytest.importorskip("litdata")
PROBE = Path(__file__).with_name("stream_probe.py")


def log_lines(path: Path) -> list[dict]:
    lines = [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []
    return [line for line in lines if "step" in line]  # not the probe's end-of-training weights line


@pytest.mark.slow
def test_kill_9_mid_epoch_then_resume_trains_each_sample_of_the_epoch_once(tmp_path, s3_env, test_resnet_weights):
    from transferkit.cli import app as cli
    from transferkit.runtime.checkpoint_io import checkpoint_meta

    folder = write_class_folder(tmp_path / "images", per_class=12)
    cli.run(["optimize", f"data.root={upload_folder(folder, 'resume', 'raw')}", "out=s3://resume/optimized",
             "data.val_fraction=0.1", "data.test_fraction=0.1", f"run_dir={tmp_path / 'optimize'}"])
    run_dir, sample_log = tmp_path / "run", tmp_path / "samples.jsonl"
    env = {**os.environ, **s3_env, "TRANSFERKIT_SAMPLE_LOG": str(sample_log), "NO_ALBUMENTATIONS_UPDATE": "1",
           "OMP_NUM_THREADS": "1"}
    env.pop("TRANSFERKIT_RUN_DIR", None)
    fit = [sys.executable, str(PROBE), "fit", "data.root=s3://resume/optimized", "model.backbone=test_resnet",
           f"model.weights={test_resnet_weights}", "data.image_size=32", "data.batch_size=2", "data.num_workers=0",
           "trainer.accelerator=cpu", "trainer.devices=1", "trainer.max_epochs=2", "finetune=full",
           "checkpoint.every_steps=3", f"data.stream_cache={tmp_path / 'cache'}", f"run_dir={run_dir}"]
    first = subprocess.Popen(fit, env={**env, "TRANSFERKIT_STEP_SLEEP": "0.4"}, cwd=tmp_path,
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 240
    while not any(line["step"] >= 7 for line in log_lines(sample_log)):
        assert first.poll() is None and time.monotonic() < deadline, first.stderr.read()[-3000:] if first.stderr else ""
        time.sleep(0.1)
    first.send_signal(signal.SIGKILL)  # kill -9: no handler runs, nothing is saved on the way out
    first.wait()
    saved = checkpoint_meta(run_dir / "checkpoints" / "mid-epoch.ckpt")["global_step"]
    killed = log_lines(sample_log)
    assert killed[-1]["epoch"] == 0 and saved < killed[-1]["step"] < 11  # killed mid-epoch, after the checkpoint
    resumed = subprocess.run([*fit[:2], "fit", f"resume={run_dir}"], env=env, cwd=tmp_path, capture_output=True,
                             text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    survived = [line for line in killed if line["step"] <= saved] + log_lines(sample_log)[len(killed):]
    steps = [line["step"] for line in survived]
    assert steps == list(range(1, len(steps) + 1))  # every update once: none lost, none repeated
    results = json.loads((run_dir / "results.json").read_text())
    train_size = results["data"]["train_size"]
    for epoch in (0, 1):
        seen = sorted(i for line in survived if line["epoch"] == epoch for i in line["indices"])
        assert seen == list(range(train_size)), f"epoch {epoch}: {seen}"
