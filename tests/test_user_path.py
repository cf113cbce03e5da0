"""The real user's path, end to end: a colour folder, a catalogue model, weights from a file, the
Hugging Face cache or the house backbone; offline with nothing chosen, one line naming the fix."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.conftest import write_timm_weights
from transferkit.cli import app as cli
pytestmark = pytest.mark.slow
QUICK = ["data.batch_size=4", "data.num_workers=0", "trainer.max_epochs=1", "trainer.accelerator=cpu",
         "trainer.devices=1", "trainer.enable_model_summary=false"]


def saved_config(results: dict) -> dict:
    return yaml.safe_load((Path(results["run_dir"]) / "config.yaml").read_text())


def test_catalogue_model_with_a_local_file_trains_at_its_native_format(image_folder, tmp_path):
    weights = write_timm_weights(tmp_path / "resnet18.safetensors", "resnet18")
    results = cli.run(["fit", "recipe=small_similar", "model=resnet18", f"model.weights={weights}",
                       f"data.root={image_folder}", *QUICK, f"run_dir={tmp_path / 'run'}"])
    config = saved_config(results)
    assert (config["model"]["backbone"], config["model"]["in_chans"], config["data"]["image_size"]) == ("resnet18", 3, 224)
    assert config["data"]["mean"] == pytest.approx([0.485, 0.456, 0.406])
    assert config["data"]["std"] == pytest.approx([0.229, 0.224, 0.225])
    assert results["plan"]["weights"]["kind"] == "file" and results["plan"]["input"]["interpolation"] == "bicubic"
    assert results["feature_cache"]["used"] and results["strategy"] == "freeze"
    assert "test/acc" in results["metrics"]


def test_house_weights_on_a_users_folder_work_offline(image_folder, tmp_path, monkeypatch):
    monkeypatch.setattr("transferkit.models.network.socket.create_connection",
                        lambda *a, **k: pytest.fail("the network was asked"))
    results = cli.run(["fit", "recipe=small_similar", f"data.root={image_folder}", "model.weights=charnet",
                       *QUICK, f"run_dir={tmp_path / 'run'}"])
    assert results["backbone"] == "resnet10t" and results["weights"] == "charnet"
    assert results["plan"]["input"]["in_chans"] == 1 and results["plan"]["input"]["image_size"] == 32


def test_hub_weights_from_the_cache_offline(image_folder, tmp_path, monkeypatch):
    from tests.test_weights import write_hf_cache

    write_hf_cache(tmp_path / "hub")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    results = cli.run(["fit", "model.backbone=test_resnet", "model.weights=hub", f"model.cache_dir={tmp_path / 'hub'}",
                       f"data.root={image_folder}", "data.image_size=64", *QUICK, f"run_dir={tmp_path / 'run'}"])
    assert results["plan"]["weights"]["kind"] == "hf-cache"
    assert results["weights"].endswith("model.safetensors") and str(tmp_path / "hub") in results["weights"]


def test_a_folder_and_nothing_else_offline_stops_in_one_line(image_folder, tmp_path):
    (tmp_path / "empty_cache").mkdir()
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(tmp_path / "empty_cache"),
           "NO_ALBUMENTATIONS_UPDATE": "1"}
    proc = subprocess.run([sys.executable, "-m", "transferkit", "fit", f"data.root={image_folder}"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1
    error = [line for line in proc.stderr.splitlines() if line.startswith("transferkit: error:")]
    assert len(error) == 1 and "model.weights" in error[0] and "resnet50" in error[0]
    assert "model.weights=charnet" in error[0]
    assert not (tmp_path / "outputs").exists()  # stopped before a run directory or any training


def test_measuring_for_auto_leaves_the_random_streams_alone(image_folder, fast):
    """`auto` measures the data before training; that must not shift training's random numbers."""
    import random

    import numpy as np
    import torch

    from transferkit.training.builders import build_datamodule
    from transferkit.planning.plan import plan_spec, plan_training

    spec = plan_spec(cli.compose_config([f"data.root={image_folder}", *fast, "finetune=auto"]), "fit")
    datamodule = build_datamodule(spec.data, spec.model.input.in_chans)
    datamodule.scan()
    torch.manual_seed(3), np.random.seed(3), random.seed(3)
    before = (torch.random.get_rng_state(), np.random.get_state()[1].copy(), random.getstate())
    spec = plan_training(spec, datamodule)
    assert spec.finetune.advice is not None and spec.finetune.race is not None  # it did measure
    assert torch.equal(torch.random.get_rng_state(), before[0])
    assert (np.random.get_state()[1] == before[1]).all() and random.getstate() == before[2]


def test_auto_on_a_users_folder_prints_the_race_and_writes_the_auto_block(image_folder, tmp_path, caplog):
    caplog.set_level("INFO", logger="transferkit")
    results = cli.run(["fit", "recipe=small_similar", f"data.root={image_folder}", "model.weights=charnet",
                       "finetune=auto", *QUICK, "trainer.max_epochs=3", f"run_dir={tmp_path / 'run'}"])
    auto = results["auto"]
    names = [c["name"] for c in auto["candidates"]]
    assert names[:2] == ["freeze", "full-llrd"] and auto["winner"] in names
    assert all({"name", "strategy", "rungs", "seconds"} <= set(c) for c in auto["candidates"])
    assert all({"epochs", "val_loss", "val_acc"} <= set(r) for c in auto["candidates"] for r in c["rungs"])
    assert "race (val/acc ± bootstrap SE" in caplog.text and "<- winner" in caplog.text
    assert results["advice"]["similarity"] is not None
