"""Segmentation task and data: scores, losses, finetuning, folder scanning, one short fit."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from tests.conftest import write_segmentation_folder
from transferkit.data.masks import MaskError, write_index_png
from transferkit.data.segmentation import SegmentationDataModule, scan_segmentation_folder
from transferkit.tasks.segmentation import (
    SegmentationTask,
    metric_name,
    scores_from_confusion,
    soft_dice_loss,
)

TASK_ARGS = {
    "finetune": {"strategy": "freeze"},
    "optimizer": {"name": "adamw", "lr": 1e-2},
    "scheduler": {"name": "constant"},
}


def make_task(**kwargs) -> SegmentationTask:
    args = {"num_classes": 3, "model": {"backbone": "test_resnet", "head": "fcn8s"}, **TASK_ARGS, **kwargs}
    return SegmentationTask(**args)


def test_scores_from_confusion() -> None:
    # truth x prediction; class 3 never occurs and must not drag the mean down.
    confmat = torch.tensor([[8, 2, 0, 0], [1, 4, 0, 0], [0, 0, 5, 0], [0, 0, 0, 0]])
    iou, miou, pixel_acc = scores_from_confusion(confmat)
    torch.testing.assert_close(iou[:3], torch.tensor([8 / 11, 4 / 7, 1.0]))
    assert iou[3].isnan()
    torch.testing.assert_close(miou, torch.tensor((8 / 11 + 4 / 7 + 1.0) / 3))
    torch.testing.assert_close(pixel_acc, torch.tensor(17 / 20))


def test_soft_dice_is_zero_for_confident_truth_and_ignores_ignored_pixels() -> None:
    target = torch.tensor([[[0, 1], [2, 255]]])
    logits = torch.nn.functional.one_hot(target.clamp(max=2), 3).permute(0, 3, 1, 2).float() * 50
    logits[0, :, 1, 1] = torch.tensor([0.0, 0.0, 50.0])  # wrong where ignored: must not count
    assert soft_dice_loss(logits, target, 255).item() < 1e-3
    # All wrong: each class gets probability 1 spread over two pixels, overlap 0, smoothing 1:
    # Dice = (0 + 1) / (1 + 1 + 1) per class.
    assert soft_dice_loss(-logits, target, 255).item() == pytest.approx(2 / 3, abs=1e-4)


def test_loss_ignores_ignore_index_and_handles_all_ignored() -> None:
    task = make_task(dice_weight=0.5)
    logits = torch.randn(2, 3, 4, 4, requires_grad=True)
    target = torch.randint(0, 3, (2, 4, 4))
    changed = target.clone()
    changed[:, 0] = 255
    assert not torch.isclose(task.loss(logits, target), task.loss(logits, changed))
    empty = task.loss(logits, torch.full((2, 4, 4), 255))
    assert empty.item() == 0.0
    empty.backward()


def test_forward_keeps_size_and_freeze_trains_only_the_head() -> None:
    task = make_task()
    assert task(torch.randn(2, 3, 37, 45)).shape == (2, 3, 37, 45)
    assert not any(p.requires_grad for p in task.encoder.parameters())
    assert all(p.requires_grad for p in task.head.parameters())
    task.train()
    assert not any(m.training for m in task.encoder.modules() if isinstance(m, torch.nn.BatchNorm2d))


def test_predict_step_returns_index_masks() -> None:
    masks = make_task().predict_step(torch.randn(2, 3, 33, 40), 0)
    assert masks.shape == (2, 33, 40) and masks.dtype == torch.int64


def test_bad_task_options_name_their_key() -> None:
    with pytest.raises(TypeError, match="model.heads"):
        make_task(model={"backbone": "test_resnet", "heads": "fcn8s"})
    with pytest.raises(ValueError, match="model.head='fcn4s'"):
        make_task(model={"backbone": "test_resnet", "head": "fcn4s"})
    with pytest.raises(ValueError, match="task.class_weights"):
        make_task(class_weights=[1.0, 2.0])
    assert metric_name("traffic light") == "traffic_light"


def test_predict_mask_and_prediction_pngs(tmp_path: Path) -> None:
    from transferkit.data.masks import load_mask, overlay
    from transferkit.inference.outputs import save_prediction_pngs
    from transferkit.inference.predictor import predict_files, task_predictor

    config = {"image_size": 32, "in_chans": 3, "mean": [0.5] * 3, "std": [0.25] * 3}
    task = make_task(data_config=config).eval()
    image = np.random.default_rng(0).integers(0, 256, (45, 70, 3), dtype=np.uint8)
    predictor = task_predictor(task)
    x = predictor.transforms[0](image=image)["image"][None]
    assert x.shape == (1, 3, 32, 32)
    mask = task.predict_mask(x, image.shape[:2])[0].numpy()
    # Zero-initialised score layers: every logit is 0, so the argmax is class 0 everywhere.
    assert mask.shape == (45, 70) and mask.dtype == np.int64 and not mask.any()
    mask[10:20, 5:9] = 1
    mask_path, overlay_path = save_prediction_pngs(image, mask, tmp_path, "x")
    np.testing.assert_array_equal(load_mask(mask_path, num_classes=3), mask)
    blended = np.asarray(Image.open(overlay_path))
    np.testing.assert_array_equal(blended[mask == 0], image[mask == 0])
    expected = np.rint((image[12, 6].astype(float) + (128, 0, 0)) / 2)
    np.testing.assert_array_equal(blended[12, 6], expected)
    np.testing.assert_array_equal(overlay(image, mask), blended)
    # The predict command's entry point: one mask + overlay per readable image, at its own size.
    (tmp_path / "in").mkdir()
    Image.fromarray(image).save(tmp_path / "in" / "a.png")
    (tmp_path / "in" / "broken.png").write_bytes(b"not a png")
    out = tmp_path / "out"
    assert predict_files(predictor, sorted((tmp_path / "in").iterdir()), out) == {"written": 1}
    assert load_mask(out / "a_mask.png", num_classes=3).shape == (45, 70)
    assert (out / "a_overlay.png").is_file() and not (out / "broken_mask.png").exists()


def test_grid_callback_draws_the_first_validation_samples_on_rank_zero(tmp_path: Path) -> None:
    from types import SimpleNamespace

    from transferkit.evaluation.reports.seg_grid import SegmentationGridCallback

    task = make_task(data_config={"mean": [0.5] * 3, "std": [0.25] * 3}).eval()
    images, truths = torch.randn(3, 3, 16, 16), torch.randint(0, 3, (3, 16, 16))
    preds = task(images).argmax(dim=1)
    callback = SegmentationGridCallback(tmp_path, samples=2)

    def epoch(rank_zero: bool, sanity: bool) -> None:
        trainer = SimpleNamespace(is_global_zero=rank_zero, sanity_checking=sanity)
        callback.on_validation_epoch_start(trainer, task)
        callback.on_validation_batch_end(trainer, task, preds, (images, truths), 0)
        callback.on_validation_batch_end(trainer, task, preds + 1, (images, truths), 1)  # not drawn
        callback.on_validation_epoch_end(trainer, task)

    epoch(rank_zero=False, sanity=False)
    epoch(rank_zero=True, sanity=True)
    assert not (tmp_path / "seg_grid.png").exists()
    epoch(rank_zero=True, sanity=False)
    assert (tmp_path / "seg_grid.png").is_file()
    assert callback.batch[0].shape[0] == 2 and torch.equal(callback.batch[2], preds[:2])
    with pytest.raises(ValueError, match="task.grid_samples=-1"):
        SegmentationGridCallback(tmp_path, samples=-1)


def test_denormalize_and_grid(tmp_path: Path) -> None:
    from transferkit.evaluation.reports.seg_grid import denormalize, save_segmentation_grid

    images = np.random.default_rng(1).integers(0, 256, (2, 8, 8, 3), dtype=np.uint8)
    normalised = (torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255 - 0.4) / 0.2
    np.testing.assert_array_equal(denormalize(normalised, [0.4] * 3, [0.2] * 3), images)
    masks = np.zeros((2, 8, 8), dtype=np.int64)
    path = save_segmentation_grid(images, masks, masks + 1, tmp_path / "grid.png", class_names=["a", "b"])
    with Image.open(path) as grid:
        assert grid.size[0] > 100 and grid.size[1] > 100


# -- folders ----------------------------------------------------------------------------
@pytest.fixture
def seg_folder(tmp_path: Path) -> Path:
    return write_segmentation_folder(tmp_path, shape=(20, 24), suffix=".jpg")


def test_folder_is_paired_by_stem_and_split_by_seed(seg_folder: Path) -> None:
    splits = scan_segmentation_folder(seg_folder, val_fraction=0.2, test_fraction=0.1, seed=1)
    assert [len(splits[s]) for s in ("train", "val", "test")] == [7, 2, 1]
    assert all(image.stem == mask.stem for pairs in splits.values() for image, mask in pairs)
    assert splits == scan_segmentation_folder(seg_folder, val_fraction=0.2, test_fraction=0.1, seed=1)


def test_missing_mask_names_the_image(seg_folder: Path) -> None:
    (seg_folder / "masks" / "3.png").unlink()
    with pytest.raises(FileNotFoundError, match=r"no mask for image .*3\.jpg"):
        scan_segmentation_folder(seg_folder)


def test_size_mismatch_names_both_files(seg_folder: Path) -> None:
    write_index_png(np.zeros((10, 10)), seg_folder / "masks" / "4.png")
    with pytest.raises(ValueError, match=r"mask .*4\.png' is 10x10 but its image .*4\.jpg' is 24x20"):
        scan_segmentation_folder(seg_folder)


def write_phone_photo(path: Path, stored_wh: tuple[int, int], orientation: int = 6) -> Path:
    """A JPEG stored ``stored_wh`` whose EXIF says to display it rotated (6: 90 degrees clockwise)."""
    exif = Image.Exif()
    exif[0x0112] = orientation
    pixels = np.random.default_rng(0).integers(0, 256, (stored_wh[1], stored_wh[0], 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path, exif=exif)
    return path


def test_exif_rotated_image_pairs_with_a_mask_of_its_displayed_size(seg_folder: Path) -> None:
    from transferkit.data.segmentation import MaskFileSource

    photo = write_phone_photo(seg_folder / "images" / "4.jpg", (64, 48))  # displayed 48 wide, 64 high
    write_index_png(np.random.default_rng(1).integers(0, 3, (64, 48)), seg_folder / "masks" / "4.png")
    splits = scan_segmentation_folder(seg_folder, val_fraction=0.2, test_fraction=0.0)
    pair = next(p for pairs in splits.values() for p in pairs if p[0] == photo)
    image, mask = MaskFileSource([pair], num_classes=3)[0]
    assert image.shape == (64, 48, 3) and mask.shape == (64, 48)

    write_index_png(np.zeros((48, 64)), seg_folder / "masks" / "4.png")  # drawn on the stored pixels
    with pytest.raises(ValueError, match=r"mask .*4\.png' is 64x48 but its image .*4\.jpg' is 48x64 "
                                         r"once its EXIF orientation is applied"):
        scan_segmentation_folder(seg_folder)


def test_datamodule_batches_and_bad_values(seg_folder: Path) -> None:
    dm = SegmentationDataModule(str(seg_folder), image_size=32, batch_size=2, num_classes=3,
                                val_fraction=0.2, test_fraction=0.2)
    dm.setup()
    images, masks = next(iter(dm.train_dataloader()))
    assert images.shape == (2, 3, 32, 32) and images.dtype == torch.float32
    assert masks.shape == (2, 32, 32) and masks.dtype == torch.int64
    assert set(masks.unique().tolist()) <= {0, 1, 2, 255}
    small = SegmentationDataModule(str(seg_folder), image_size=32, batch_size=2, num_classes=2)
    small.setup()
    with pytest.raises(MaskError, match=r"class ids \[2\].*data\.num_classes=2"):
        next(iter(small.val_dataloader()))


def test_datamodule_needs_num_classes_for_folders(seg_folder: Path) -> None:
    with pytest.raises(ValueError, match="data.num_classes=None"):
        SegmentationDataModule(str(seg_folder))
    with pytest.raises(ValueError, match="data.embedded='digits'"):
        SegmentationDataModule(None, embedded="digits")
    with pytest.raises(ValueError, match=r"data.class_names=\['a', 'b'\] does not fit the embedded scenes"):
        SegmentationDataModule(None, class_names=["a", "b"])
    with pytest.raises(ValueError, match="augment.name='fancy'"):
        SegmentationDataModule(None, augment="fancy")


def test_scenes_datamodule_and_joint_augmentation() -> None:
    dm = SegmentationDataModule(None, image_size=48, batch_size=4, embedded_length=16, augment="strong")
    dm.setup()
    assert dm.class_names[0] == "background" and dm.sizes() == {"train": 16, "val": 32, "test": 64}
    images, masks = next(iter(dm.train_dataloader()))
    assert images.shape == (4, 3, 48, 48) and masks.shape == (4, 48, 48)
    # Nearest-neighbour masks: only real ids (or the ignore fill), never blended values.
    assert set(masks.unique().tolist()) <= set(range(5)) | {255}


@pytest.mark.slow
def test_fcn8s_recipe_fits_a_folder_and_reloads(seg_folder: Path, fast: list[str]) -> None:
    from transferkit.cli import app as cli
    results = cli.run(["fit", "recipe=fcn8s", f"data.root={seg_folder}", "data.num_classes=3", *fast,
                       "trainer.limit_train_batches=2", "trainer.limit_val_batches=1",
                       "trainer.limit_test_batches=1"])
    metrics = results["metrics"]
    assert results["task"] == "segmentation" and results["data"]["num_classes"] == 3
    assert 0.0 <= metrics["test/miou"] <= 1.0 and 0.0 <= metrics["test/pixel_acc"] <= 1.0
    assert {"val/miou", "test/iou_class_0"} <= set(metrics)
    run_dir = Path(results["run_dir"])
    assert (run_dir / "seg_grid.png").is_file()
    task = SegmentationTask.load_from_checkpoint(results["best_checkpoint"], map_location="cpu").eval()
    assert task.hparams.model["head"] == "fcn8s" and task.feature_indices == [2, 3, 4]
    with torch.no_grad():
        assert task(torch.randn(1, 3, 29, 35)).shape == (1, 3, 29, 35)

    # predict through the CLI writes an index mask (at the image's own size) and an overlay per image
    images = sorted((seg_folder / "images").iterdir()) if (seg_folder / "images").is_dir() else \
        sorted(seg_folder.rglob("images/*"))
    out = run_dir.parent / "predicted"
    cli.run(["predict", f"ckpt_path={results['best_checkpoint']}", f"input={images[0]}", f"run_dir={out}"])
    from PIL import Image

    mask = Image.open(out / f"{images[0].stem}_mask.png")
    assert mask.mode == "P" and mask.size == Image.open(images[0]).size
    assert set(np.unique(np.array(mask))) <= {0, 1, 2}
    assert (out / f"{images[0].stem}_overlay.png").is_file()
