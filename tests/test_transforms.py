"""Augmentation recipes: output contract, normalisation, joint image+mask geometry, batch mixing."""

from __future__ import annotations

from itertools import product

import albumentations as A
import cv2
import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, Dataset

from transferkit.data.transforms import AUGMENTS, build_batch_mix, build_transforms

MEAN, STD = (0.1, 0.2, 0.3), (0.5, 0.25, 0.125)


def random_image(h: int, w: int, c: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, c), dtype=np.uint8)


@pytest.mark.parametrize("name,in_chans,train", list(product(AUGMENTS, (1, 3), (True, False))))
def test_output_is_float32_chw_of_image_size(name, in_chans, train):
    pipeline = build_transforms(name, train=train, image_size=24, mean=MEAN, std=STD, in_chans=in_chans)
    out = pipeline(image=random_image(20, 37, in_chans))["image"]
    assert isinstance(out, torch.Tensor)
    assert out.dtype == torch.float32
    assert tuple(out.shape) == (in_chans, 24, 24)
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("name", ["none", "light", "strong"])
def test_eval_pipeline_is_deterministic_and_uses_given_mean_std(name):
    pipeline = build_transforms(name, train=False, image_size=16, mean=MEAN, std=STD, in_chans=3)
    image = np.empty((9, 13, 3), dtype=np.uint8)
    image[...] = (100, 50, 200)
    out = pipeline(image=image)["image"]
    expected = [(v / 255 - m) / s for v, m, s in zip((100, 50, 200), MEAN, STD)]
    for channel, value in enumerate(expected):
        torch.testing.assert_close(out[channel], torch.full((16, 16), value), atol=1e-5, rtol=0)
    photo = random_image(30, 20, 3)
    torch.testing.assert_close(pipeline(image=photo)["image"], pipeline(image=photo)["image"], atol=0, rtol=0)


def test_grey_input_uses_the_average_of_rgb_statistics():
    pipeline = build_transforms("none", train=False, image_size=8, mean=MEAN, std=STD, in_chans=1)
    out = pipeline(image=np.full((8, 8, 1), 51, dtype=np.uint8))["image"]
    expected = (51 / 255 - np.mean(MEAN)) / np.mean(STD)
    torch.testing.assert_close(out, torch.full((1, 8, 8), float(expected)), atol=1e-5, rtol=0)


def test_statistics_of_the_wrong_length_name_the_key():
    with pytest.raises(ValueError, match=r"mean=\[0.1, 0.2\] has 2 values but model.in_chans=3"):
        build_transforms("none", train=False, image_size=8, mean=MEAN[:2], std=STD, in_chans=3)


@pytest.mark.parametrize("train", [True, False])
def test_cifar_standardises_each_image_and_ignores_mean_std(train):
    torch.manual_seed(0)
    for seed in range(5):
        photo = (random_image(32, 32, 3, seed) // 2 + 60).astype(np.uint8)  # not zero-centred
        out = build_transforms("cifar", train, 32, MEAN, STD)(image=photo)["image"]
        assert tuple(out.shape) == (3, 32, 32)
        assert abs(float(out.mean())) < 1e-4
        assert float(out.std(unbiased=False)) == pytest.approx(1.0, abs=1e-3)
    eval_a = build_transforms("cifar", False, 32, MEAN, STD)(image=photo)["image"]
    eval_b = build_transforms("cifar", False, 32, (0.9,) * 3, (2.0,) * 3)(image=photo)["image"]
    torch.testing.assert_close(eval_a, eval_b, atol=0, rtol=0)


def test_cifar_flat_image_stays_finite_and_pad_crop_shifts_it():
    flat = np.full((32, 32, 3), 200, dtype=np.uint8)
    assert torch.equal(build_transforms("cifar", False, 32, MEAN, STD)(image=flat)["image"],
                       torch.zeros(3, 32, 32))
    torch.manual_seed(0)
    pipeline = build_transforms("cifar", True, 32, MEAN, STD)
    outs = [pipeline(image=flat)["image"] for _ in range(20)]
    assert all(tuple(o.shape) == (3, 32, 32) for o in outs)
    shifted = [o for o in outs if float(o.std()) > 0]  # zero padding came into the crop
    assert len(shifted) >= 10
    for out in shifted:  # padding is at most 4 px per side: the crop keeps the middle
        assert float(out[:, 4:28, 4:28].std()) < 1e-6


def half_bright_pair(h: int = 40, w: int = 48) -> tuple[np.ndarray, np.ndarray]:
    """Left half black with mask 0, right half white with mask 3."""
    image = np.zeros((h, w, 3), dtype=np.uint8)
    image[:, w // 2:] = 255
    mask = np.zeros((h, w), dtype=np.uint8)
    mask[:, w // 2:] = 3
    return image, mask


def interior(mask: np.ndarray) -> np.ndarray:
    """Pixels whose 3 x 3 neighbourhood has one label (the image is blended at label edges)."""
    padded = np.pad(mask, 1, mode="edge")
    h, w = mask.shape
    shifts = [padded[dy:dy + h, dx:dx + w] for dy in range(3) for dx in range(3)]
    return np.all([s == mask for s in shifts], axis=0)


def bright(out: torch.Tensor, name: str) -> np.ndarray:
    """Pixels that were white before normalisation (per-image standardised: above the mean)."""
    if name == "cifar":
        return (out.mean(0) > 0).numpy()
    mean = torch.tensor(MEAN).view(3, 1, 1)
    std = torch.tensor(STD).view(3, 1, 1)
    return ((out * std + mean).mean(0) > 0.5).numpy()


@pytest.mark.parametrize("name", AUGMENTS)
def test_mask_moves_with_the_image_and_keeps_its_values(name):
    torch.manual_seed(0)
    image, mask = half_bright_pair()
    pipeline = build_transforms(name, train=True, image_size=32, mean=MEAN, std=STD)
    flipped = 0
    for _ in range(30):
        out = pipeline(image=image, mask=mask)
        out_mask = out["mask"].numpy()
        assert out_mask.shape == (32, 32)
        assert set(np.unique(out_mask)) <= {0, 3}  # nearest only: no 1s or 2s from blending
        white, inside = bright(out["image"], name), interior(out_mask)
        assert np.all(out_mask[white & inside] == 3)  # white pixels carry the white label
        assert not np.any(white[inside & (out_mask == 0)])  # background pixels stayed dark
        columns = np.nonzero(out_mask == 3)[1]
        flipped += bool(len(columns)) and columns.mean() < 16
    if name == "none":
        assert flipped == 0
    else:
        assert 5 <= flipped <= 25  # horizontal flips happen, half of the time


def test_fill_mask_marks_padding():
    torch.manual_seed(0)
    image, mask = half_bright_pair(32, 32)
    pipeline = build_transforms("cifar", True, 32, MEAN, STD, fill_mask=255)
    values = set()
    for _ in range(20):
        values |= set(np.unique(pipeline(image=image, mask=mask)["mask"].numpy()).tolist())
    assert values == {0, 3, 255}


def test_unknown_name_names_the_key_and_lists_choices():
    choices = r"\['cifar', 'light', 'none', 'strong'\]"
    with pytest.raises(ValueError, match=rf"augment.name='fancy' is unknown; use one of {choices}"):
        build_transforms("fancy", train=True, image_size=32, mean=MEAN, std=STD)


@pytest.mark.parametrize("name,train", list(product(AUGMENTS, (True, False))))
@pytest.mark.parametrize("interpolation,flag", [("bilinear", cv2.INTER_LINEAR), ("bicubic", cv2.INTER_CUBIC),
                                                ("nearest", cv2.INTER_NEAREST), ("area", cv2.INTER_AREA)])
def test_interpolation_sets_every_resize_and_keeps_masks_nearest(name, train, interpolation, flag):
    pipeline = build_transforms(name, train, 16, MEAN, STD, interpolation=interpolation)
    resizes = [t for t in pipeline.transforms if isinstance(t, (A.Resize, A.RandomResizedCrop))]
    assert resizes and all(t.interpolation == flag for t in resizes)
    assert all(t.mask_interpolation == cv2.INTER_NEAREST for t in resizes)


def test_default_interpolation_is_bilinear_and_unknown_names_the_key():
    assert repr(build_transforms("light", True, 16, MEAN, STD)) == \
        repr(build_transforms("light", True, 16, MEAN, STD, interpolation="bilinear"))
    with pytest.raises(ValueError, match=r"data.interpolation='lanczos' is unknown; use one of \['area'"):
        build_transforms("none", False, 16, MEAN, STD, interpolation="lanczos")


class RepeatedImage(Dataset):
    def __init__(self, pipeline) -> None:
        self.pipeline, self.image = pipeline, random_image(32, 32, 3)

    def __len__(self) -> int:
        return 8

    def __getitem__(self, index: int) -> torch.Tensor:
        return self.pipeline(image=self.image)["image"]


def draws(num_workers: int) -> list[torch.Tensor]:
    torch.manual_seed(7)
    dataset = RepeatedImage(build_transforms("strong", True, 16, MEAN, STD))
    return [b[0] for b in DataLoader(dataset, batch_size=1, num_workers=num_workers)]


def test_loader_workers_draw_different_reproducible_augmentations():
    first, again = draws(2), draws(2)
    # Worker 0 yields items 0, 2, 4, 6 and worker 1 items 1, 3, 5, 7: they must not be twins.
    assert not any(torch.equal(first[2 * k], first[2 * k + 1]) for k in range(4))
    assert all(torch.equal(a, b) for a, b in zip(first, again))


def test_batch_mix_off_when_alphas_are_zero_and_rejects_negative():
    assert build_batch_mix(0.0, 0.0, num_classes=3) is None
    with pytest.raises(ValueError, match="augment.cutmix_alpha=-1.0"):
        build_batch_mix(0.2, -1.0, num_classes=3)


def test_mixup_blends_images_and_targets_with_one_lambda():
    np.random.seed(0)
    mix = build_batch_mix(0.4, 0.0, num_classes=3)
    x = torch.rand(4, 3, 8, 8)
    y = torch.tensor([0, 1, 2, 1])
    mixed, target = mix(x.clone(), y)
    assert target.shape == (4, 3)
    torch.testing.assert_close(target.sum(1), torch.ones(4))
    lam = float(target[0, 0])  # sample 0 (class 0) is mixed with sample 3 (class 1)
    assert 0.0 < lam < 1.0
    assert float(target[0, 1]) == pytest.approx(1 - lam)
    torch.testing.assert_close(mixed, lam * x + (1 - lam) * x.flip(0))


def test_cutmix_pastes_a_box_and_targets_follow_its_area():
    np.random.seed(0)  # a seed whose box is not empty (an empty box leaves lam = 1)
    mix = build_batch_mix(0.0, 1.0, num_classes=2)
    x = torch.stack([torch.zeros(1, 16, 16), torch.ones(1, 16, 16)])
    mixed, target = mix(x.clone(), torch.tensor([0, 1]))
    pasted = float(mixed[0].mean())  # share of sample 0 now covered by sample 1's pixels
    assert 0.0 < pasted < 1.0
    torch.testing.assert_close(target.sum(1), torch.ones(2))
    assert float(target[0, 1]) == pytest.approx(pasted, abs=1e-6)


@pytest.mark.filterwarnings("ignore:You are trying to `self.log\\(\\)`")
def test_training_step_trains_on_mixed_soft_targets():
    from transferkit.tasks.classification import ClassificationTask

    task = ClassificationTask(num_classes=3, model={"backbone": "test_resnet"}, mixup_alpha=0.4,
                              finetune={"strategy": "full"})
    x, y = torch.rand(4, 3, 32, 32), torch.tensor([0, 1, 2, 1])
    np.random.seed(3)
    loss = task.training_step((x.clone(), y), 0)
    np.random.seed(3)
    mixed, soft = build_batch_mix(0.4, 0.0, num_classes=3)(x.clone(), y)
    expected = torch.sum(-soft * torch.log_softmax(task(mixed), -1), -1).mean()
    plain = torch.nn.functional.cross_entropy(task(x), y)
    torch.testing.assert_close(loss, expected)
    assert abs(float(loss.detach()) - float(plain.detach())) > 1e-4


def test_datamodule_checks_the_recipe_and_keeps_cifar_normalisation_for_eval():
    from transferkit.data.datamodule import ClassificationDataModule

    with pytest.raises(ValueError, match="augment.name='fancy'"):
        ClassificationDataModule(root=None, augment="fancy")
    datamodule = ClassificationDataModule(root=None, augment="cifar", mean=MEAN, std=STD)
    eval_pipeline = datamodule.transform(train=False)
    photo = random_image(32, 32, 3)
    out = eval_pipeline(image=photo)["image"]  # standardised like training, not with MEAN/STD
    assert abs(float(out.mean())) < 1e-4
    assert float(out.std(unbiased=False)) == pytest.approx(1.0, abs=1e-3)


def test_flips_false_drops_every_flip():
    import albumentations as A

    from transferkit.data.transforms import build_transforms

    for name in ("light", "strong", "cifar"):
        kept = build_transforms(name, train=True, image_size=32, mean=[0.5], std=[0.5], in_chans=1)
        dropped = build_transforms(name, train=True, image_size=32, mean=[0.5], std=[0.5], in_chans=1,
                                   flips=False)
        flip_types = (A.HorizontalFlip, A.VerticalFlip)
        assert any(isinstance(t, flip_types) for t in kept.transforms)
        assert not any(isinstance(t, flip_types) for t in dropped.transforms)
