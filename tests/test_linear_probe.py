"""Linear probing before training: `finetune.head_solver=lbfgs` (freeze) and `finetune.lpft=true` (LP-FT)."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from pytorch_lightning.plugins.precision import Precision

from transferkit.cli import app as cli
from transferkit.data.datamodule import ClassificationDataModule
from transferkit.errors import ConfigError
from transferkit.tasks.finetune import FinetunePlan
from transferkit.tasks.head_solver import solve_linear_head
from transferkit.planning.finetune import plan_head
from transferkit.planning.spec import TaskSpec, TrainerSpec
from transferkit.tasks.classification import ClassificationTask
from transferkit.tasks.linear_probe import LinearProbeCallback, eval_train_dataset


def make_task(finetune: dict, **model) -> ClassificationTask:
    return ClassificationTask(num_classes=2, model={"backbone": "test_resnet", "in_chans": 3, **model},
                              finetune=finetune)


def stub_trainer(datamodule, ckpt_path: str | None = None) -> SimpleNamespace:
    """What LinearProbeCallback reads from a Trainer at train start (no cache: image batches)."""
    return SimpleNamespace(ckpt_path=ckpt_path, current_epoch=0, datamodule=datamodule,
                           train_dataloader=datamodule.train_dataloader(), precision_plugin=Precision())


@pytest.fixture
def datamodule(image_folder: Path) -> ClassificationDataModule:
    data = ClassificationDataModule(root=str(image_folder), image_size=32, batch_size=4, num_workers=0,
                                    augment="light")
    data.scan()
    return data


def test_lp_init_sets_the_solved_head_and_leaves_the_backbone_alone(datamodule):
    task = make_task({"strategy": "partial", "lpft": True}).train()
    backbone = {k: v.clone() for k, v in task.encoder.state_dict().items()}
    callback = LinearProbeCallback(seed=0)
    callback.on_train_start(stub_trainer(datamodule), task)
    dataset = eval_train_dataset(datamodule)
    with torch.no_grad():
        task.encoder.eval()
        features = torch.cat([task.encoder(x[None]) for x, _ in dataset]).numpy()
    labels = np.array([y for _, y in dataset])
    expected = solve_linear_head(features, labels, 2, seed=0)
    np.testing.assert_allclose(task.head[-1].weight.detach().numpy(), expected.weight, rtol=1e-3, atol=1e-3)
    np.testing.assert_allclose(task.head[-1].bias.detach().numpy(), expected.bias, rtol=1e-3, atol=1e-3)
    assert all(torch.equal(v, backbone[k]) for k, v in task.encoder.state_dict().items())
    assert callback.report["then"] == "partial" and callback.report["items"] == len(labels)


def test_lp_init_is_skipped_on_resume(datamodule):
    task = make_task({"strategy": "full", "lpft": True})
    head = task.head[-1].weight.detach().clone()
    LinearProbeCallback().on_train_start(stub_trainer(datamodule, ckpt_path="last.ckpt"), task)
    assert torch.equal(task.head[-1].weight, head)


def test_a_solved_head_without_its_callback_fails_loudly():
    task = make_task({"strategy": "freeze", "head_solver": "lbfgs"})
    task._trainer = SimpleNamespace(callbacks=[])
    with pytest.raises(RuntimeError, match="LinearProbeCallback"):
        task.on_train_start()
    task._trainer = SimpleNamespace(callbacks=[LinearProbeCallback()])
    task.on_train_start()


def test_a_hidden_layer_cannot_be_solved():
    with pytest.raises(ConfigError, match=r"model.hidden_dim=16"):
        make_task({"strategy": "freeze", "head_solver": "lbfgs"}, hidden_dim=16)
    with pytest.raises(ConfigError, match=r"model.hidden_dim=16"):
        make_task({"strategy": "full", "lpft": True}, hidden_dim=16)
    make_task({"strategy": "partial", "head_solver": "lbfgs"}, hidden_dim=16)  # lbfgs is for freeze only


@pytest.mark.parametrize("key, value", [("head_solver", "adam"), ("lpft", "yes")])
def test_bad_finetune_values_name_the_key(key, value):
    with pytest.raises(ConfigError, match=f"finetune.{key}={value!r}"):
        FinetunePlan(**{key: value})


def test_planning_solves_the_head_in_one_epoch_and_leaves_segmentation_to_sgd():
    def plan(kind: str, trainer: dict | None = None, **finetune):
        spec = SimpleNamespace(task=TaskSpec(kind), trainer=TrainerSpec(trainer or {"max_epochs": 15}))
        return plan_head(spec, finetune, [])

    assert plan("classification", strategy="freeze", head_solver="lbfgs")[1] == {"max_epochs": 1}
    clipped = {"max_epochs": 1, "gradient_clip_val": 1.0, "accumulate_grad_batches": 2}
    assert plan("classification", clipped, strategy="freeze", head_solver="lbfgs")[1] == {
        "gradient_clip_val": None, "accumulate_grad_batches": 1}  # refused by manual optimization
    assert plan("classification", strategy="freeze", head_solver="sgd")[1] == {}
    assert plan("classification", strategy="partial", head_solver="lbfgs", lpft=True)[1] == {}
    assert plan("segmentation", strategy="freeze", head_solver="lbfgs")[0]["head_solver"] == "sgd"
    with pytest.raises(ConfigError, match="finetune.lpft=True"):
        plan("segmentation", strategy="full", lpft=True)


def test_fit_freeze_lbfgs_solves_once_then_validates_and_checkpoints(image_folder, fast, tmp_path):
    results = cli.run(["fit", "recipe=small_similar", f"data.root={image_folder}", *fast,
                       "finetune.head_solver=lbfgs", "trainer.max_epochs=5"])
    run = Path(results["run_dir"])
    assert results["linear_probe"]["features"] == "feature cache" and results["epochs"] == 1
    assert any("trainer.max_epochs 5 -> 1" in note for note in results["plan"]["notes"])
    assert (run / "checkpoints" / "best.ckpt").is_file() and (run / "checkpoints" / "last.ckpt").is_file()
    rows = list(csv.DictReader((run / "metrics.csv").open()))
    assert any(row.get("val/acc") for row in rows) and any(row.get("train/loss_epoch") for row in rows)
    best = torch.load(run / "checkpoints" / "best.ckpt", weights_only=False)["state_dict"]
    last = torch.load(run / "checkpoints" / "last.ckpt", weights_only=False)["state_dict"]
    assert torch.equal(best["head.1.weight"], last["head.1.weight"])
    assert json.loads((run / "results.json").read_text())["linear_probe"]["c"] == results["linear_probe"]["c"]


def test_fit_partial_lpft_smoke(image_folder, fast):
    results = cli.run(["fit", f"data.root={image_folder}", *fast, "finetune=partial", "finetune.lpft=true"])
    assert results["linear_probe"]["then"] == "partial"
    assert results["linear_probe"]["features"] == "extracted (eval transform)"
    assert Path(results["best_checkpoint"]).is_file() and "test/acc" in results["metrics"]
