"""Augmentation on the training device (`data.decode=gpu`): the CPU recipe's operations, batched.

The crop parameters are drawn on the host by `sample_resized_crop`, the same draw as albumentations'
`RandomResizedCrop` (same ranges, same algorithm; tested against it), and the flip with the same
probability. The pixels are then cropped, flipped and resized for the whole batch in one
`grid_sample` on the device, and normalised with the backbone's mean and std.
Recipes supported: `none` (resize) and `light` (random resized crop + horizontal flip).
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from transferkit.errors import ConfigError
from transferkit.data.transforms import CROP_RATIO, HFLIP_P, LIGHT_CROP_SCALE
from transferkit.data.transforms import per_channel

# data.interpolation -> grid_sample mode (`area` has no grid_sample equivalent).
GRID_MODES = {"bilinear": "bilinear", "bicubic": "bicubic", "nearest": "nearest"}
DEVICE_AUGMENTS = ("none", "light")

Crop = tuple[int, int, int, int]  # top, left, height, width


def sample_resized_crop(height: int, width: int, scale: tuple[float, float], ratio: tuple[float, float],
                        rng: random.Random) -> Crop:
    """albumentations 2's `RandomResizedCrop` draw: 10 tries at a random area and aspect ratio, else a
    centred crop clamped to `ratio`. Returns (top, left, crop height, crop width)."""
    area = height * width
    log_lo, log_hi = math.log(ratio[0]), math.log(ratio[1])
    for _ in range(10):
        target = rng.uniform(scale[0] * area, scale[1] * area)
        aspect = math.exp(rng.uniform(log_lo, log_hi))
        w, h = round(math.sqrt(target * aspect)), round(math.sqrt(target / aspect))
        if 0 < w <= width and 0 < h <= height:
            h_start, w_start = rng.random(), rng.random()
            return int((height - h + 1) * h_start), int((width - w + 1) * w_start), h, w
    in_ratio = width / height
    if in_ratio < ratio[0]:
        w, h = width, round(width / ratio[0])
    elif in_ratio > ratio[1]:
        h, w = height, round(height * ratio[1])
    else:
        h, w = height, width
    return (height - h) // 2, (width - w) // 2, h, w


@dataclass(frozen=True)
class DeviceAugment:
    """One split's pipeline: `train` draws crops and flips (recipe `augment`), eval resizes."""

    augment: str
    train: bool
    image_size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    interpolation: str = "bilinear"
    flips: bool = True
    in_chans: int = 3  # 1: RGB averaged to grey, as the CPU path's `match_image_channels`

    def __post_init__(self) -> None:
        if self.augment not in DEVICE_AUGMENTS:
            raise ConfigError(f"data.decode=gpu augments on the device with augment={list(DEVICE_AUGMENTS)}; "
                              f"augment.name={self.augment!r} runs only in DataLoader workers: use "
                              "data.decode=cpu (with data.cache=true to skip repeated decoding).")
        if self.interpolation not in GRID_MODES:
            raise ConfigError(f"data.interpolation={self.interpolation!r} has no on-device resize; with "
                              f"data.decode=gpu use one of {sorted(GRID_MODES)}.")

    def draw(self, sizes: list[tuple[int, int]], rng: random.Random) -> tuple[list[Crop], list[bool]]:
        """Crops and flips of a batch of images of `sizes` (height, width)."""
        if not self.train or self.augment == "none":
            return [(0, 0, h, w) for h, w in sizes], [False] * len(sizes)

        crops = [sample_resized_crop(h, w, LIGHT_CROP_SCALE, CROP_RATIO, rng) for h, w in sizes]
        flips = [self.flips and rng.random() < HFLIP_P for _ in sizes]
        return crops, flips

    def __call__(self, images: list[torch.Tensor], rng: random.Random) -> torch.Tensor:
        """uint8 C x H x W images (any sizes, one device) -> float N x C x S x S, normalised."""
        crops, flips = self.draw([tuple(im.shape[-2:]) for im in images], rng)
        if self.in_chans == 1:
            images = [im.float().mean(0, keepdim=True).round().to(torch.uint8) for im in images]
        return resized_crops(images, crops, flips, self.image_size, GRID_MODES[self.interpolation],
                             per_channel(self.mean, self.in_chans, "data.mean"),
                             per_channel(self.std, self.in_chans, "data.std"))


def pad_batch(images: list[torch.Tensor]) -> torch.Tensor:
    """Images of different sizes in one zero-padded uint8 N x C x Hmax x Wmax tensor."""
    channels = images[0].shape[0]
    height, width = max(im.shape[-2] for im in images), max(im.shape[-1] for im in images)
    canvas = images[0].new_zeros((len(images), channels, height, width))
    for i, image in enumerate(images):
        canvas[i, :, :image.shape[-2], :image.shape[-1]] = image
    return canvas


def resized_crops(images: list[torch.Tensor], crops: list[Crop], flips: list[bool], size: int, mode: str,
                  mean: tuple[float, ...], std: tuple[float, ...]) -> torch.Tensor:
    """Crop, flip and resize every image to `size` x `size` in one `grid_sample` (pixel-centre aligned,
    like OpenCV's resize; samples clamp to each image's own pixels), then normalise."""
    canvas = pad_batch(images)
    n, channels, pad_h, pad_w = canvas.shape
    rows = torch.tensor([[*crop, *image.shape[-2:], flip] for crop, image, flip in zip(crops, images, flips)],
                        dtype=torch.float32)
    top, left, h, w, img_h, img_w, flip = rows.unbind(1)
    sign = 1.0 - 2.0 * flip
    theta = torch.zeros((n, 2, 3))
    theta[:, 0, 0], theta[:, 0, 2] = sign * w / pad_w, (2 * left + w) / pad_w - 1
    theta[:, 1, 1], theta[:, 1, 2] = h / pad_h, (2 * top + h) / pad_h - 1
    # Clamp to the centres of each image's first and last pixel: no padding bleeds in (OpenCV replicates).
    lo = torch.stack([1 / torch.full_like(img_w, pad_w), 1 / torch.full_like(img_h, pad_h)], 1) - 1
    hi = torch.stack([(2 * img_w - 1) / pad_w, (2 * img_h - 1) / pad_h], 1) - 1
    device = canvas.device
    theta, lo, hi = (t.to(device, non_blocking=True) for t in (theta, lo, hi))
    grid = F.affine_grid(theta, [n, channels, size, size], align_corners=False)
    grid = torch.maximum(torch.minimum(grid, hi[:, None, None, :]), lo[:, None, None, :])
    out = F.grid_sample(canvas.float(), grid, mode=mode, padding_mode="border", align_corners=False)
    if mode == "bicubic":
        out = out.clamp_(0, 255)
    scale = torch.tensor([255.0 * s for s in std], device=device).view(1, -1, 1, 1)
    shift = torch.tensor([255.0 * m for m in mean], device=device).view(1, -1, 1, 1)
    return (out - shift) / scale
