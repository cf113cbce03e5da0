"""Albumentations pipelines looked up by name (`augment.name`), applied to image and mask jointly."""

from __future__ import annotations

import os
import random
from collections.abc import Callable, Sequence
from typing import Any

import albumentations as A
import cv2
import numpy as np
import torch
from albumentations.pytorch import ToTensorV2

from transferkit.errors import lookup

AUGMENTS = ("none", "light", "strong", "cifar")
# Recipes that standardise each image by its own statistics instead of the backbone's mean/std.
PER_IMAGE_STANDARDISED = frozenset({"cifar"})

# `data.interpolation` (timm's pretrained_cfg spelling) -> the OpenCV flag of every image resize.
# Masks always resize nearest-neighbour, so no new label values appear.
INTERPOLATIONS = {"bilinear": cv2.INTER_LINEAR, "bicubic": cv2.INTER_CUBIC,
                  "nearest": cv2.INTER_NEAREST, "area": cv2.INTER_AREA}

Steps = list[A.BasicTransform]

# The `light` recipe's random resized crop and flip: one definition for the albumentations pipeline
# and for the on-device one (`data.decode=gpu`, transferkit.data.device_augment).
LIGHT_CROP_SCALE = (0.7, 1.0)
CROP_RATIO = (3 / 4, 4 / 3)  # albumentations' (and torchvision's) default aspect-ratio range
HFLIP_P = 0.5


def _resize(image_size: int, fill_mask: int = 0, interpolation: int = cv2.INTER_LINEAR) -> Steps:
    return [A.Resize(image_size, image_size, interpolation=interpolation,
                     mask_interpolation=cv2.INTER_NEAREST)]


def _light(image_size: int, fill_mask: int = 0, interpolation: int = cv2.INTER_LINEAR) -> Steps:
    return [A.RandomResizedCrop((image_size, image_size), scale=LIGHT_CROP_SCALE, ratio=CROP_RATIO,
                                interpolation=interpolation),
            A.HorizontalFlip(p=HFLIP_P)]


def _strong(image_size: int, fill_mask: int = 0, interpolation: int = cv2.INTER_LINEAR) -> Steps:
    return [
        A.RandomResizedCrop((image_size, image_size), scale=(0.35, 1.0), interpolation=interpolation),
        A.HorizontalFlip(p=0.5),
        A.VerticalFlip(p=0.1),
        A.Affine(rotate=(-20, 20), shear=(-10, 10), translate_percent=(-0.1, 0.1), fill=0,
                 fill_mask=fill_mask, p=0.5),
        A.ColorJitter(brightness=0.3, contrast=0.3, saturation=0.3, hue=0.05, p=0.8),
        # Cutout hides pixels but keeps their labels: the mask is left as it is (fill_mask=None).
        A.CoarseDropout(num_holes_range=(1, 3), hole_height_range=(0.1, 0.3),
                        hole_width_range=(0.1, 0.3), fill=0, fill_mask=None, p=0.5),
    ]


def _cifar(image_size: int, fill_mask: int = 0, interpolation: int = cv2.INTER_LINEAR) -> Steps:
    # The classic CIFAR-10 pipeline: zero-pad 4 px (of 32) on each side and random-crop back,
    # flip, brightness/contrast; build_transforms adds the per-image standardisation.
    pad = max(1, image_size // 8)
    return [
        *_resize(image_size, fill_mask, interpolation),
        A.PadIfNeeded(image_size + 2 * pad, image_size + 2 * pad, border_mode=cv2.BORDER_CONSTANT,
                      fill=0, fill_mask=fill_mask),
        A.RandomCrop(image_size, image_size),
        A.HorizontalFlip(p=0.5),
        A.RandomBrightnessContrast(brightness_limit=0.2, contrast_limit=0.2, p=0.5),
    ]


TRAIN_PIPELINES: dict[str, Callable[..., Steps]] = {
    "none": _resize, "light": _light, "strong": _strong, "cifar": _cifar,
}


def trains_with_flips(name: str, flips: bool = True) -> bool:
    """Whether the train pipeline `augment.name` mirrors images left-right (with `augment.flips`).

    Recorded in each checkpoint's data config, so test-time augmentation flips only models that saw
    mirrored images in training (a mirrored digit is not a digit).
    """
    steps = lookup(TRAIN_PIPELINES, name, "augment.name")(32)
    return bool(flips) and any(isinstance(t, A.HorizontalFlip) for t in steps)


class TorchSeededCompose(A.Compose):
    """`A.Compose` that seeds its one random generator from torch's seed in each process.

    albumentations 2 keeps a private generator that DataLoader workers inherit by fork, so
    without this every worker draws the same augmentations, and `seed_everything` does not make
    them reproducible. `torch.initial_seed()` is the global seed in the main process and a
    distinct, reproducible seed in each worker.
    """

    seeded_pid: int | None = None

    def __call__(self, *args: Any, force_apply: bool = False, **data: Any) -> dict[str, Any]:
        if self.seeded_pid != os.getpid():
            self.reseed(torch.initial_seed())
        return super().__call__(*args, force_apply=force_apply, **data)

    def reseed(self, seed: int) -> None:
        """One generator shared by all steps (per-step generators with one seed would correlate them)."""
        seed %= 2**63
        self.set_random_state(np.random.default_rng(seed), random.Random(seed))
        self.seeded_pid = os.getpid()


def per_channel(values: Sequence[float], in_chans: int, key: str) -> tuple[float, ...]:
    """Statistics with one value per input channel (grey = average of RGB, a single value repeats)."""
    values = tuple(float(v) for v in values)
    if len(values) == in_chans:
        return values
    if len(values) == 1:
        return values * in_chans
    if in_chans == 1:
        return (sum(values) / len(values),)
    raise ValueError(f"{key}={list(values)!r} has {len(values)} values but model.in_chans={in_chans!r}; "
                     f"give 1 or {in_chans} values.")


class PerImageStandardize(A.ImageOnlyTransform):
    """`(x - mean) / max(std, 1 / sqrt(N))` over the whole image, as float32 (TF's CIFAR-10 recipe).

    The floor on the std keeps a flat image finite (all zeros) instead of dividing by ~0.
    """

    def __init__(self, p: float = 1.0) -> None:
        super().__init__(p=p)

    def apply(self, img: np.ndarray, **params: Any) -> np.ndarray:
        pixels = img.astype(np.float32)
        floor = 1.0 / np.sqrt(pixels.size)
        return ((pixels - pixels.mean()) / max(float(pixels.std()), floor)).astype(np.float32)


def build_normalize(name: str, mean: Sequence[float], std: Sequence[float],
                    in_chans: int) -> A.ImageOnlyTransform:
    if name in PER_IMAGE_STANDARDISED:
        return PerImageStandardize()
    return A.Normalize(mean=per_channel(mean, in_chans, "mean"), std=per_channel(std, in_chans, "std"),
                       max_pixel_value=255.0)


def build_transforms(name: str, train: bool, image_size: int, mean: Sequence[float],
                     std: Sequence[float], in_chans: int = 3, fill_mask: int = 0,
                     flips: bool = True, interpolation: str = "bilinear") -> A.Compose:
    """The train (augmenting) or eval (resize only) pipeline for `augment.name`.

    Call it as `pipeline(image=uint8 H x W x C)` or `pipeline(image=..., mask=H x W ints)`: the
    output image is a float32 C x H x W tensor, the mask an integer H x W tensor moved with the
    image (nearest-neighbour only, so no new label values). `cifar` ends with per-image
    standardisation (each image to zero mean, unit variance), in its eval pipeline too; the other
    recipes normalise with the backbone's pretrained `mean`/`std`.

    Args:
        fill_mask: mask value for pixels that padding or rotation create (segmentation: its
            `ignore_index`).
        flips: `augment.flips`; False drops the random flips (digits, text: a flip changes the class).
        interpolation: `data.interpolation`, the image filter of every resize and resized crop:
            "bilinear" (default), "bicubic", "nearest" or "area" (timm's pretrained_cfg values).
    """
    build = lookup(TRAIN_PIPELINES, name, "augment.name")
    flag = lookup(INTERPOLATIONS, interpolation, "data.interpolation")
    if image_size < 8:
        raise ValueError(f"data.image_size={image_size!r} is too small; use at least 8 pixels.")
    steps = build(image_size, fill_mask, flag) if train else _resize(image_size, fill_mask, flag)
    if not flips:
        steps = [t for t in steps if not isinstance(t, (A.HorizontalFlip, A.VerticalFlip))]
    normalize = build_normalize(name, mean, std, in_chans)
    return TorchSeededCompose([*steps, normalize, ToTensorV2()], mask_interpolation=cv2.INTER_NEAREST)


def build_eval_resize(image_size: int, interpolation: str = "bilinear") -> A.Compose:
    """The eval pipeline's resize alone: ``uint8 H x W x C`` in, ``uint8 image_size x image_size x C``
    out (the input of an exported model that normalises inside its graph)."""
    flag = lookup(INTERPOLATIONS, interpolation, "data.interpolation")
    return A.Compose(_resize(image_size, 0, flag))


def build_batch_mix(mixup_alpha: float, cutmix_alpha: float, num_classes: int,
                    label_smoothing: float = 0.0):
    """timm's batch-level mixup/cutmix (soft targets summing to 1), or None when both alphas are 0.

    The returned callable maps `(images, int labels)` to `(mixed images, N x num_classes targets)`
    and needs an even batch size.
    """
    for key, alpha in (("augment.mixup_alpha", mixup_alpha), ("augment.cutmix_alpha", cutmix_alpha)):
        if alpha < 0:
            raise ValueError(f"{key}={alpha!r} must be >= 0 (0 turns it off; 0.2-1.0 are usual).")
    if not (mixup_alpha or cutmix_alpha):
        return None
    from timm.data import Mixup

    return Mixup(mixup_alpha=mixup_alpha, cutmix_alpha=cutmix_alpha, label_smoothing=label_smoothing,
                 num_classes=num_classes)
