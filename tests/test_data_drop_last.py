"""data.drop_last: a training batch of one image (batch norm cannot train on it) is dropped."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from transferkit.data.loader_settings import drops_last
from transferkit.errors import ConfigError
from transferkit.evaluation.lr_schedule import steps_per_epoch


@pytest.mark.parametrize(("setting", "images", "batch", "world", "expected"), [
    ("auto", 9, 4, 1, True), ("auto", 10, 4, 1, False), ("auto", 8, 4, 1, False), ("auto", 1, 4, 1, True),
    ("auto", 17, 4, 2, True),   # 9 images a rank (padded up): 4 + 4 + 1
    ("auto", 11, 4, 2, False),  # 6 a rank: 4 + 2
    (True, 10, 4, 1, True), (False, 9, 4, 1, False)])
def test_auto_drops_only_a_last_batch_of_one_image(setting, images, batch, world, expected):
    assert drops_last(setting, images, batch, SimpleNamespace(world_size=world)) is expected


def synthetic(**options):
    from transferkit.data.datamodule import ClassificationDataModule

    datamodule = ClassificationDataModule(embedded="synthetic", image_size=8, batch_size=4, embedded_length=9,
                                          synthetic_classes=3, **options)
    datamodule.scan()
    return datamodule


def test_training_loader_drops_the_one_image_batch_and_evaluation_keeps_every_image():
    datamodule = synthetic()
    assert len(datamodule.sources["train"]) == 9
    assert [len(y) for _, y in datamodule.train_dataloader()] == [4, 4]
    assert [len(y) for _, y in synthetic(drop_last=False).train_dataloader()] == [4, 4, 1]
    assert sum(len(y) for _, y in datamodule.val_dataloader()) == len(datamodule.sources["val"])


def test_bad_drop_last_names_the_key():
    with pytest.raises(ConfigError, match="data.drop_last='sometimes'"):
        synthetic(drop_last="sometimes")


def test_plot_lr_counts_the_steps_training_takes():
    assert steps_per_epoch(9, 4, {}, drop_last=True) == 2
    assert steps_per_epoch(9, 4, {}) == 3


@pytest.mark.parametrize("batch_size", [0, 2.5, True])
@pytest.mark.parametrize("module", ["classification", "segmentation"])
def test_a_batch_size_that_is_not_a_whole_number_names_the_key(module, batch_size):
    from transferkit.data.datamodule import ClassificationDataModule
    from transferkit.data.segmentation import SegmentationDataModule

    cls = ClassificationDataModule if module == "classification" else SegmentationDataModule
    with pytest.raises(ValueError, match=rf"data.batch_size={batch_size!r} must be a whole number >= 1"):
        cls(embedded="synthetic" if module == "classification" else "scenes", batch_size=batch_size)
