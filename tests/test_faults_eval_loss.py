"""`val/loss` and `test/loss` are the mean over images, not over batches: an uneven last batch (10
images in batches of 3) weighs by its size (the multi-process version: tests/test_distributed.py)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from transferkit.tasks.classification import ClassificationTask


@pytest.mark.filterwarnings("ignore:You are trying to `self.log\\(\\)`")
@pytest.mark.parametrize("stage", ["val", "test"])
def test_eval_loss_is_the_mean_over_images_when_the_last_batch_is_short(stage):
    torch.manual_seed(0)
    task = ClassificationTask(num_classes=3, model={"backbone": "test_resnet", "in_chans": 3}).eval()
    images, targets = torch.randn(10, 3, 32, 32), torch.tensor([0, 1, 2, 0, 1, 2, 0, 1, 2, 0])
    step = task.validation_step if stage == "val" else task.test_step
    with torch.no_grad():
        for start in range(0, 10, 3):  # batches of 3, 3, 3 and 1
            step((images[start:start + 3], targets[start:start + 3]), start // 3)
        per_image = F.cross_entropy(task(images), targets)
        per_batch = torch.stack([F.cross_entropy(task(images[s:s + 3]), targets[s:s + 3]) for s in range(0, 10, 3)])
    assert not torch.isclose(per_batch.mean(), per_image, atol=1e-4)  # the layout tells the two means apart
    assert task.eval_losses[stage].compute() == pytest.approx(float(per_image), abs=1e-6)
