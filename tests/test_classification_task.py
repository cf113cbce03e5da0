"""ClassificationTask: frozen strategy trains only the head; logged metrics equal sklearn's."""

from __future__ import annotations

import numpy as np
import pytorch_lightning as pl
import torch
from sklearn.metrics import accuracy_score, f1_score
from torch.utils.data import DataLoader, TensorDataset

from transferkit.tasks.classification import ClassificationTask


def make_task(**kwargs) -> ClassificationTask:
    return ClassificationTask(num_classes=4, model={"backbone": "test_resnet", "in_chans": 3}, **kwargs)


def test_freeze_trains_the_head_only():
    task = make_task(finetune={"strategy": "freeze"})
    trainable = {n for n, p in task.named_parameters() if p.requires_grad}
    assert trainable == {n for n, _ in task.named_parameters() if n.startswith("head.")}
    assert task.num_params()["trainable"] == sum(p.numel() for p in task.head.parameters())


def test_logged_test_metrics_match_sklearn(monkeypatch):
    torch.manual_seed(0)
    task = make_task(top_k=2).eval()
    # The "images" carry their own logits: the first batch is all right, later ones are not
    # (torchmetrics' compute groups once merged F1 with top-k accuracy in exactly this case).
    y = torch.arange(40) % 4
    logits = torch.nn.functional.one_hot(y, 4).float() * 5
    logits[8:] = torch.randn(32, 4)
    x = torch.zeros(40, 3, 32, 32)
    x.view(40, -1)[:, :4] = logits
    monkeypatch.setattr(task, "forward", lambda images: images.reshape(len(images), -1)[:, :4])
    pred = logits.argmax(-1).numpy()
    trainer = pl.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False,
                         enable_model_summary=False, enable_checkpointing=False)
    logged = trainer.test(task, DataLoader(TensorDataset(x, y), batch_size=8), verbose=False)[0]
    assert logged["test/acc"] == np.float32(accuracy_score(y, pred))
    assert abs(logged["test/f1"] - f1_score(y, pred, average="macro", zero_division=0)) < 1e-5
    assert logged["test/acc_top2"] >= logged["test/acc"]
