"""Files that change under a run: an image deleted or damaged after the scan is skipped and recorded like a
bad file at scan time (within data.max_bad_fraction), named in the log, and never stops an epoch."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader

from tests.conftest import write_class_folder, write_segmentation_folder
from transferkit.data.sources import FileSource, TransformedDataset
from transferkit.data.vanished import SkipLog, TooManyUnreadableError, collate_readable


def to_tensor(image):
    return {"image": torch.tensor(image).permute(2, 0, 1).float()}


def items_of(root: Path) -> list[tuple[Path, int]]:
    return [(path, int(path.parent.name == "dog")) for path in sorted(root.glob("*/*.png"))]


def loader(items, skips: SkipLog, batch_size: int, num_workers: int = 0) -> DataLoader:
    dataset = TransformedDataset(FileSource(items, skips=skips), to_tensor, drop_unreadable=True)
    return DataLoader(dataset, batch_size=batch_size, collate_fn=collate_readable, num_workers=num_workers)


@pytest.mark.parametrize("num_workers", [0, 1])
def test_images_gone_mid_run_are_dropped_from_their_batch_and_recorded(tmp_path, num_workers, caplog):
    items = items_of(write_class_folder(tmp_path / "images", per_class=5))  # 10 images
    skips = SkipLog.create(max_bad_fraction=0.2, total=10, skipped_at_scan=0)
    gone, damaged = items[1][0], items[6][0]
    gone.unlink()  # deleted by a sync client after the scan
    damaged.write_bytes(damaged.read_bytes()[:40])  # replaced by half a file
    with caplog.at_level(logging.WARNING, logger="transferkit.data.vanished"):
        batches = list(loader(items, skips, batch_size=3, num_workers=num_workers))
    assert [len(labels) for _, labels in batches] == [2, 3, 2, 1]  # the whole epoch, less the two files
    assert [path for path, _ in skips.entries()] == [gone, damaged]  # every process's record, read here
    assert "file not found" in skips.entries()[0][1] and "\n" not in skips.entries()[1][1]
    if num_workers == 0:  # a worker logs in its own process
        assert str(gone) in caplog.text and "became unreadable during the run" in caplog.text


def test_a_batch_with_every_image_gone_gets_readable_stand_ins(tmp_path):
    items = items_of(write_class_folder(tmp_path / "images", per_class=3))
    skips = SkipLog.create(max_bad_fraction=0.5, total=6, skipped_at_scan=0)
    for path, _ in items[:2]:
        path.unlink()
    batches = list(loader(items, skips, batch_size=2))
    assert [len(labels) for _, labels in batches] == [2, 2, 2]  # the first: stand-ins (items 2 and 2)
    assert torch.equal(batches[0][0][0], batches[0][0][1]) and len(skips.entries()) == 2


def test_more_gone_than_max_bad_fraction_stops_the_run_naming_the_setting(tmp_path):
    items = items_of(write_class_folder(tmp_path / "images", per_class=5))
    skips = SkipLog.create(max_bad_fraction=0.2, total=10, skipped_at_scan=1)  # 2 allowed, 1 used at scan
    for path, _ in items[:2]:
        path.unlink()
    with pytest.raises(TooManyUnreadableError, match=r"data\.max_bad_fraction=0\.2 of 10 allows"):
        list(loader(items, skips, batch_size=3))


def test_without_a_skip_log_an_unreadable_file_still_fails_as_before(tmp_path):
    from transferkit.data.decode import UnreadableImageError

    items = items_of(write_class_folder(tmp_path / "images", per_class=2))
    items[0][0].unlink()
    with pytest.raises(UnreadableImageError, match="file not found"):
        FileSource(items)[0]


class DeleteAtEpoch(pl.Callback):
    """Deletes a training image and damages a validation image when epoch `epoch` (0-based) starts."""

    def __init__(self, epoch: int) -> None:
        self.epoch, self.changed = epoch, []

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        if trainer.current_epoch != self.epoch:
            return
        train, val = trainer.datamodule.sources["train"].items[0][0], trainer.datamodule.sources["val"].items[0][0]
        train.unlink()
        val.write_bytes(val.read_bytes()[:40])
        self.changed = [train, val]


@pytest.mark.slow
def test_a_fit_goes_on_when_images_vanish_mid_run_and_names_them(image_folder, fast, tmp_path, monkeypatch, caplog):
    from transferkit.cli import app as cli
    from transferkit.training import builders

    change = DeleteAtEpoch(epoch=1)
    guards = builders.run_guard_callbacks
    monkeypatch.setattr(builders, "run_guard_callbacks", lambda checkpoints: [*guards(checkpoints), change])
    with caplog.at_level(logging.WARNING, logger="transferkit.data.vanished"):
        results = cli.run(["fit", f"data.root={image_folder}", *fast, "trainer.max_epochs=3", "finetune=full",
                           "data.max_bad_fraction=0.25"])
    assert results["status"] == "completed" and results["epochs"] == 3
    assert len(change.changed) == 2
    for path in change.changed:
        assert f"Skipping {path}: it became unreadable during the run" in caplog.text


@pytest.mark.slow
def test_images_vanished_mid_run_are_listed_in_results_json(image_folder, fast, tmp_path, monkeypatch):
    from transferkit.cli import app as cli
    from transferkit.training import builders

    change = DeleteAtEpoch(epoch=1)
    guards = builders.run_guard_callbacks
    monkeypatch.setattr(builders, "run_guard_callbacks", lambda checkpoints: [*guards(checkpoints), change])
    results = cli.run(["fit", f"data.root={image_folder}", *fast, "trainer.max_epochs=2", "finetune=full",
                       "data.max_bad_fraction=0.25"])
    recorded = json.loads((Path(results["run_dir"]) / "results.json").read_text())["data"]["skipped_files"]
    assert [Path(path) for path, _ in recorded] == change.changed
    assert "file not found" in recorded[0][1]


def test_segmentation_pairs_gone_mid_run_are_dropped_from_their_batch_and_recorded(tmp_path):
    from transferkit.data.segmentation import SegmentationDataModule

    write_segmentation_folder(tmp_path)  # batches of 5 (shuffled): no batch holds only gone pairs
    data = SegmentationDataModule(root=str(tmp_path), image_size=16, batch_size=5, num_classes=3, val_fraction=0.0,
                                  test_fraction=0.0, augment="none", max_bad_fraction=0.2, drop_last=False)
    data.scan()
    pairs = data.sources["train"].pairs
    gone_image, gone_mask = pairs[1][0], pairs[5][1]
    gone_image.unlink()  # an image deleted after the scan
    gone_mask.write_bytes(gone_mask.read_bytes()[:20])  # a mask replaced by part of a file
    batches = list(data.train_dataloader())
    assert sum(len(masks) for _, masks in batches) == len(pairs) - 2  # the whole epoch, less the two pairs
    assert sorted(path for path, _ in data.skip_log.entries()) == sorted([gone_image, gone_mask])


def test_images_gone_mid_run_are_dropped_on_the_device_decode_path_too(tmp_path):
    from transferkit.data.datamodule import ClassificationDataModule

    data = ClassificationDataModule(root=str(write_class_folder(tmp_path / "images", per_class=5)), image_size=32,
                                    batch_size=5, val_fraction=0.0, test_fraction=0.0, augment="none", decode="gpu",
                                    max_bad_fraction=0.2, drop_last=False)  # data.decode=gpu runs on the CPU here
    data.scan()
    items = data.sources["train"].items
    gone = [items[1][0], items[4][0]]
    for path in gone:
        path.unlink()
    batches = list(data.train_dataloader())
    # Batches of 5 (shuffled): no batch can hold only gone files (such a batch would carry stand-ins).
    assert sum(len(labels) for _, labels in batches) == len(items) - 2  # the whole epoch, less the two files
    assert sorted(path for path, _ in data.skip_log.entries()) == sorted(gone)
