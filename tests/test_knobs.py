"""The course's training knobs: `regularization.l1` and `model.spatial_dropout`."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
import torch

from transferkit.cli import app as cli
from transferkit.errors import ConfigError
from transferkit.tasks.regularization import l1_penalty, l1_weights
from transferkit.tasks.classification import ClassificationTask


def tiny_task(**kwargs) -> ClassificationTask:
    model = {"backbone": "test_resnet", "in_chans": 3, **kwargs.pop("model", {})}
    return ClassificationTask(num_classes=2, model=model, data_config={"image_size": 32}, **kwargs)


def test_l1_covers_trainable_weights_only() -> None:
    task = tiny_task(finetune={"strategy": "partial", "trainable_stages": 1})
    covered = {id(p) for p in l1_weights(task.encoder, task.head)}
    named = dict(task.named_parameters())
    assert id(named["head.1.weight"]) in covered
    assert id(named["head.1.bias"]) not in covered                     # biases: no
    assert not any(id(p) in covered for n, p in named.items() if p.ndim <= 1)  # norms: no
    assert not any(id(p) in covered for p in task.parameters() if not p.requires_grad)  # frozen: no
    assert any(n.startswith("encoder.") for n, p in named.items() if id(p) in covered)  # the top stage: yes
    expected = sum(p.abs().sum() for p in task.parameters() if id(p) in covered)
    assert torch.isclose(l1_penalty(l1_weights(task.encoder, task.head)), expected)


def test_l1_is_added_to_the_training_loss() -> None:
    torch.manual_seed(0)
    batch = (torch.randn(2, 3, 32, 32), torch.tensor([0, 1]))
    finetune = {"strategy": "freeze", "head_solver": "sgd"}
    plain = tiny_task(finetune=finetune)
    penalised = tiny_task(finetune=finetune, regularization={"l1": 0.5})
    penalised.load_state_dict(plain.state_dict())
    plain.eval(), penalised.eval()
    gap = penalised.training_step(batch, 0) - plain.training_step(batch, 0)
    assert torch.isclose(gap, 0.5 * penalised.head[1].weight.abs().sum())


def test_l1_rejects_bad_values() -> None:
    with pytest.raises(ConfigError, match="regularization.l1"):
        tiny_task(regularization={"l1": -1.0})
    with pytest.raises(ConfigError, match="regularization.l2"):
        tiny_task(regularization={"l2": 1.0})


def read_metric(run_dir: Path, key: str) -> list[float]:
    rows = csv.DictReader((run_dir / "metrics.csv").open())
    return [float(r[key]) for r in rows if r.get(key)]


@pytest.mark.slow
def test_l1_shrinks_the_head_and_is_logged(image_folder, fast, tmp_path) -> None:
    sgd = ["finetune=freeze", "finetune.head_solver=sgd", "augment=none", "trainer.max_epochs=3",
           "optimizer=sgd", "optimizer.lr=0.05", "optimizer.weight_decay=0", "scheduler=constant"]
    norms = {}
    for l1 in (0.0, 0.05):
        args = [a for a in fast if not a.startswith(("run_dir", "trainer.max_epochs"))]
        results = cli.run(["fit", f"data.root={image_folder}", *args, *sgd, f"regularization.l1={l1}",
                           f"run_dir={tmp_path / str(l1)}"])
        task = ClassificationTask.load_from_checkpoint(results["last_checkpoint"])
        norms[l1] = float(task.head[1].weight.detach().abs().sum())
        logged = read_metric(Path(results["run_dir"]), "train/l1_epoch")
        assert (len(logged) == 3) == (l1 > 0)
    assert norms[0.05] < 0.5 * norms[0.0]


def test_spatial_dropout_drops_whole_channels_before_pooling() -> None:
    task = tiny_task(model={"spatial_dropout": 0.5})
    plain = tiny_task()
    plain.load_state_dict(task.state_dict())
    x = torch.randn(4, 3, 32, 32)
    task.eval(), plain.eval()
    assert torch.allclose(task(x), plain(x))  # eval: no dropout, the same network
    task.train()  # the frozen encoder stays deterministic (eval-mode BN); only the dropout is random
    features = task.encoder.forward_features(x)
    seen = {}
    task.encoder.forward_head = lambda f, pre_logits=False: seen.setdefault("map", f).mean((2, 3))
    task(x)
    live = features.abs().amax(dim=(2, 3)) > 0  # N x C maps with any signal
    dropped = seen["map"].abs().amax(dim=(2, 3)) == 0
    assert 0.3 < dropped[live].float().mean() < 0.7  # whole maps dropped, at rate p
    kept = live & ~dropped
    assert torch.allclose(seen["map"][kept], 2 * features[kept])  # the rest scaled by 1 / (1 - p)


def test_spatial_dropout_refuses_token_backbones_and_bad_values() -> None:
    with pytest.raises(ConfigError, match="model.spatial_dropout"):
        tiny_task(model={"spatial_dropout": 1.0})
    vit = ClassificationTask(num_classes=2, model={"backbone": "test_vit", "spatial_dropout": 0.2},
                             data_config={"image_size": 32})
    vit.train()
    with pytest.raises(ConfigError, match="model.spatial_dropout=0.2.*CNN backbone"):
        vit(torch.randn(2, 3, 32, 32))


def test_spatial_dropout_turns_the_feature_cache_off_or_refuses(image_folder, fast) -> None:
    from transferkit.planning.plan import plan_run

    base = ["fit", f"data.root={image_folder}", *fast, "finetune=freeze", "finetune.head_solver=sgd",
            "augment=none", "model.spatial_dropout=0.2"]
    spec, _ = plan_run(cli.compose_config(base[1:]), "fit")
    assert spec.finetune.cache["used"] is False
    assert any("model.spatial_dropout" in r for r in spec.finetune.cache["reasons"])
    with pytest.raises(ConfigError, match="model.spatial_dropout=0.2"):
        plan_run(cli.compose_config([*base[1:], "finetune.cache_features=true"]), "fit")


def test_segmentation_refuses_spatial_dropout() -> None:
    from transferkit.tasks.segmentation import SegmentationTask

    with pytest.raises(ConfigError, match="model.spatial_dropout"):
        SegmentationTask(num_classes=2, model={"backbone": "test_resnet", "spatial_dropout": 0.2})
