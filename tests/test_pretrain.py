"""`pretrain` trains on the generated source task and exports a backbone that `model.weights` loads."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from transferkit.cli import app as cli
from transferkit.models.backbones import create_backbone
from transferkit.models.weight_loading import load_backbone_weights

pytestmark = pytest.mark.slow


def test_house_recipe_pretrains_a_few_steps_and_exports(tmp_path):
    results = cli.run([
        "pretrain", "recipe=house_charnet", "model.backbone=test_resnet", "data.embedded_length=64",
        "data.batch_size=8", "data.num_workers=0", "trainer.max_epochs=1", "trainer.limit_train_batches=3",
        "trainer.limit_val_batches=2", "trainer.limit_test_batches=2", "trainer.accelerator=cpu",
        "trainer.enable_progress_bar=false", "trainer.enable_model_summary=false", f"run_dir={tmp_path / 'pre'}",
    ])
    run_dir = Path(results["run_dir"])
    weights = run_dir / "backbone.safetensors"
    record = json.loads((run_dir / "backbone.json").read_text())
    assert record["backbone"] == "test_resnet" and record["in_chans"] == 1
    assert len(record["source_classes"]) == 62 and "test/acc" in record["source_metrics"]
    assert record["dtype"] == "float16"

    fresh = create_backbone("test_resnet", in_chans=1)
    report = load_backbone_weights(fresh, weights)
    assert not report.missing and not report.mismatched
    from safetensors.torch import load_file

    stored = load_file(str(weights))
    assert all(v.dtype == torch.float16 for v in stored.values() if v.is_floating_point())
    assert torch.equal(fresh.conv1[0].weight.half(), stored["conv1.0.weight"])

    # ... and transfers: fine-tune from the exported file on a different task. Its backbone.json
    # names the architecture and input format, so model.weights alone is enough.
    transferred = cli.run([
        "fit", f"model.weights={weights}",
        "data.batch_size=16", "data.num_workers=0", "trainer.max_epochs=1", "trainer.limit_train_batches=2",
        "trainer.accelerator=cpu", "trainer.enable_progress_bar=false", f"run_dir={tmp_path / 'fit'}",
    ])
    assert transferred["weights"] == str(weights) and transferred["strategy"] == "freeze"
    assert transferred["backbone"] == "test_resnet"
    assert transferred["plan"]["input"]["in_chans"] == 1 and transferred["plan"]["input"]["image_size"] == 32
