"""Albumentations pipelines looked up by name (`augment.name`), applied to image and mask jointly."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import albumentations as A
import cv2
from albumentations.pytorch import ToTensorV2

from transferkit.errors import lookup

AUGMENTS = ("none", "light", "strong", "cifar")


def _resize(image_size: int) -> list[A.BasicTransform]:
    return [A.Resize(image_size, image_size, interpolation=cv2.INTER_LINEAR,
                     mask_interpolation=cv2.INTER_NEAREST)]


def _light(image_size: int) -> list[A.BasicTransform]:
    return [A.RandomResizedCrop((image_size, image_size), scale=(0.7, 1.0)), A.HorizontalFlip(p=0.5)]


def _strong(image_size: int) -> list[A.BasicTransform]:
    return [
        A.RandomResizedCrop((image_size, image_size), scale=(0.35, 1.0)),
        A.HorizontalFlip(p=0.5),
        A.VerticalFlip(p=0.1),
        A.Affine(rotate=(-20, 20), shear=(-10, 10), translate_percent=(-0.1, 0.1), p=0.5),
        A.ColorJitter(brightness=0.3, contrast=0.3, saturation=0.3, hue=0.05, p=0.8),
        A.CoarseDropout(num_holes_range=(1, 3), hole_height_range=(0.1, 0.3),
                        hole_width_range=(0.1, 0.3), fill=0, fill_mask=None, p=0.5),
    ]


def _cifar(image_size: int) -> list[A.BasicTransform]:
    # The classic CIFAR-10 pipeline: pad 4 px (of 32) and random-crop back, flip, brightness/contrast.
    pad = max(1, image_size // 8)
    return [
        *_resize(image_size),
        A.PadIfNeeded(image_size + 2 * pad, image_size + 2 * pad, border_mode=cv2.BORDER_REFLECT_101),
        A.RandomCrop(image_size, image_size),
        A.HorizontalFlip(p=0.5),
        A.RandomBrightnessContrast(brightness_limit=0.2, contrast_limit=0.2, p=0.5),
    ]


TRAIN_PIPELINES: dict[str, Callable[[int], list[A.BasicTransform]]] = {
    "none": _resize, "light": _light, "strong": _strong, "cifar": _cifar,
}


def build_transforms(name: str, train: bool, image_size: int, mean: Sequence[float],
                     std: Sequence[float], in_chans: int = 3) -> A.Compose:
    """The train (augmenting) or eval (resize only) pipeline; output image is a float C x H x W tensor.

    `cifar` ends with per-image standardisation (each image to zero mean, unit variance), as in
    the classic CIFAR-10 recipe; the others normalise with the backbone's pretrained mean/std.
    """
    build = lookup(TRAIN_PIPELINES, name, "augment.name")
    if image_size < 8:
        raise ValueError(f"data.image_size={image_size!r} is too small; use at least 8 pixels.")
    steps = build(image_size) if train else _resize(image_size)
    if name == "cifar":
        normalize = A.Normalize(mean=None, std=None, normalization="image")
    else:
        normalize = A.Normalize(mean=tuple(mean[:in_chans]), std=tuple(std[:in_chans]), max_pixel_value=255.0)
    return A.Compose([*steps, normalize, ToTensorV2()])


def build_batch_mix(mixup_alpha: float, cutmix_alpha: float, num_classes: int,
                    label_smoothing: float = 0.0):
    """timm's batch-level mixup/cutmix (soft targets), or None when both alphas are 0."""
    if not (mixup_alpha or cutmix_alpha):
        return None
    from timm.data import Mixup

    return Mixup(mixup_alpha=mixup_alpha, cutmix_alpha=cutmix_alpha, label_smoothing=label_smoothing,
                 num_classes=num_classes)
