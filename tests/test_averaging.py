"""Averaged weights: `ema.decay` validates and checkpoints the average; `swa.*` averages only what
trains and recomputes only the trainable norms' statistics."""

from __future__ import annotations

from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch

from transferkit.cli import app as cli
from transferkit.training.averaging import EMACallback, TrainableSWA, build_averaging_callbacks
from transferkit.data.datamodule import ClassificationDataModule
from transferkit.errors import ConfigError
from transferkit.tasks.finetune import trainable_norms
from transferkit.tasks.loading import read_checkpoint
from transferkit.tasks.classification import ClassificationTask

SGD = {"name": "sgd", "lr": 0.5, "momentum": 0.0, "weight_decay": 0.0}


def pretrained_stats(task: ClassificationTask) -> ClassificationTask:
    """Give every BatchNorm statistics unlike a fresh reset's (0 mean, 1 variance), as pretraining would."""
    generator = torch.Generator().manual_seed(1)
    for module in task.encoder.modules():
        if getattr(module, "running_mean", None) is not None:
            module.running_mean.copy_(torch.randn(module.running_mean.shape, generator=generator))
            module.running_var.copy_(torch.rand(module.running_var.shape, generator=generator) + 0.5)
            module.num_batches_tracked.fill_(1000)
    return task


def fit_tiny(image_folder: Path, callback: pl.Callback, finetune: dict, max_epochs: int = 2):
    torch.manual_seed(0)
    data = ClassificationDataModule(root=str(image_folder), image_size=32, batch_size=4, num_workers=0,
                                    augment="none", mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))
    data.scan()
    task = ClassificationTask(num_classes=2, model={"backbone": "test_resnet"}, finetune=finetune,
                              optimizer=SGD, scheduler={"name": "constant", "interval": "epoch"},
                              data_config={"image_size": 32})
    pretrained_stats(task)
    trainer = pl.Trainer(max_epochs=max_epochs, accelerator="cpu", devices=1, callbacks=[callback], logger=False,
                         enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                         num_sanity_val_steps=0)
    trainer.fit(task, data)
    return trainer, task, data


def validate(trainer: pl.Trainer, task, data) -> float:
    return float(trainer.validate(task, data, verbose=False)[0]["val/loss"])


def test_validation_uses_the_ema_weights(image_folder) -> None:
    ema = EMACallback(0.9)
    trainer, task, data = fit_tiny(image_folder, ema, {"strategy": "full", "backbone_lr_scale": 1.0})
    during_fit = float(trainer.callback_metrics["val/loss"])  # the last epoch's validation
    assert validate(trainer, task, data) == pytest.approx(during_fit, abs=1e-6)  # the task now holds the EMA
    average = {k: v.clone() for k, v in task.state_dict().items()}
    task.load_state_dict({**average, **ema.final_raw})  # the weights training ended with
    raw = validate(trainer, task, data)
    assert abs(raw - during_fit) > 1e-4
    moved = [k for k in ema.final_raw if ema.final_raw[k].is_floating_point()
             and not torch.equal(ema.final_raw[k], average[k])]
    assert any(k.startswith("encoder.") for k in moved) and any(k.startswith("head.") for k in moved)


@pytest.mark.slow
def test_ema_checkpoints_hold_the_average(image_folder, fast) -> None:
    results = cli.run(["fit", f"data.root={image_folder}", *fast, "finetune=full", "augment=none",
                       "ema.decay=0.9", "optimizer.lr=0.05", "trainer.max_epochs=2"])
    last = read_checkpoint(Path(results["last_checkpoint"]))
    raw = last["callbacks"]["EMACallback"]["raw"]
    assert set(raw) == {k for k in last["state_dict"] if k.startswith(("encoder.", "head."))}
    assert not torch.equal(raw["head.1.weight"], last["state_dict"]["head.1.weight"])
    task = ClassificationTask.load_from_checkpoint(results["last_checkpoint"])
    assert torch.equal(task.head[1].weight, last["state_dict"]["head.1.weight"])  # loading gives the average


def frozen_and_trainable_norms(task) -> tuple[dict, dict]:
    trainable = {id(m) for m in trainable_norms(task.encoder)}
    stats = {n: (m.running_mean.clone(), m.running_var.clone(), int(m.num_batches_tracked))
             for n, m in task.encoder.named_modules() if hasattr(m, "running_mean") and m.running_mean is not None}
    ids = {n: id(m) for n, m in task.encoder.named_modules()}
    return ({n: s for n, s in stats.items() if ids[n] not in trainable},
            {n: s for n, s in stats.items() if ids[n] in trainable})


def test_swa_keeps_frozen_norms_and_recomputes_trainable_ones(image_folder) -> None:
    swa = TrainableSWA(epoch_start=0, lr=0.1)
    finetune = {"strategy": "partial", "trainable_stages": 1}
    torch.manual_seed(0)
    reference = pretrained_stats(ClassificationTask(num_classes=2, model={"backbone": "test_resnet"},
                                                    finetune=finetune, data_config={"image_size": 32}))
    frozen_before, trainable_before = frozen_and_trainable_norms(reference)
    assert frozen_before and trainable_before
    trainer, task, data = fit_tiny(image_folder, swa, finetune, max_epochs=3)
    frozen_after, trainable_after = frozen_and_trainable_norms(task)
    assert swa.applied and swa.n_averaged == 3
    for name, (mean, var, tracked) in frozen_before.items():  # never reset, never updated
        assert torch.equal(frozen_after[name][0], mean) and torch.equal(frozen_after[name][1], var)
        assert frozen_after[name][2] == tracked
    batches = len(data.train_dataloader())
    assert sorted(swa.recomputed) == sorted(f"encoder.{n}" for n in trainable_before)
    for name in trainable_before:  # reset, then one pass over the training data
        assert trainable_after[name][2] == batches
    assert all(g["lr"] == pytest.approx(0.1 * g["lr_scale"]) for g in trainer.optimizers[0].param_groups)


def test_swa_average_is_the_mean_of_epoch_ends() -> None:
    swa = TrainableSWA(epoch_start=0)
    params = [torch.zeros(3), torch.ones(2)]
    for value in (1.0, 2.0, 6.0):
        swa.update([p + value for p in params])
    assert torch.allclose(swa.averages[0], torch.full((3,), 3.0))
    assert torch.allclose(swa.averages[1], torch.full((2,), 4.0))


@pytest.mark.parametrize(("ema", "swa", "match"), [
    ({"decay": 1.0}, {}, "ema.decay"),
    ({"decay": 0.99}, {"epoch_start": 2}, "choose one"),
    ({}, {"epoch_start": -1}, "swa.epoch_start"),
    ({}, {"epoch_start": 1, "lr": 0}, "swa.lr"),
    ({}, {"lr": 0.1}, "swa.epoch_start"),
])
def test_averaging_rejects_bad_config(ema: dict, swa: dict, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        build_averaging_callbacks(ema, swa)


def test_averaging_is_off_by_default_and_refused_with_auto(image_folder, fast) -> None:
    cfg = cli.compose_config([f"data.root={image_folder}", *fast])
    assert build_averaging_callbacks(dict(cfg.ema), dict(cfg.swa)) == [] and cfg.regularization.l1 == 0
    with pytest.raises(ConfigError, match="finetune=auto"):
        cli.run(["fit", f"data.root={image_folder}", *fast, "finetune=auto", "ema.decay=0.99"])


@pytest.mark.slow
def test_swa_lr_from_epoch_start_through_the_cli(image_folder, fast, tmp_path) -> None:
    import csv

    args = [a for a in fast if not a.startswith("trainer.max_epochs")]
    results = cli.run(["fit", f"data.root={image_folder}", *args, "finetune=partial", "finetune.trainable_stages=1",
                       "augment=none", "trainer.max_epochs=3", "swa.epoch_start=1", "swa.lr=0.01"])
    rows = [r for r in csv.DictReader((Path(results["run_dir"]) / "metrics.csv").open()) if r.get("lr-AdamW/head")]
    head = [float(r["lr-AdamW/head"]) for r in rows]
    backbone = [float(r["lr-AdamW/backbone.4"]) for r in rows]
    assert head[0] != 0.01 and head[1:] == [0.01, 0.01]
    assert backbone[1:] == pytest.approx([0.001, 0.001])  # each group keeps its scale (0.1)
    last = read_checkpoint(Path(results["last_checkpoint"]))
    assert last["callbacks"]["TrainableSWA"]["applied"] and last["callbacks"]["TrainableSWA"]["n_averaged"] == 2
