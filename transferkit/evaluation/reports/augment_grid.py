"""Pictures of augmentation (`show-augs`): a few training samples, classes in turn, each as decoded and
then under several draws of the train pipeline; segmentation masks overlaid, so misalignment shows."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from matplotlib.figure import Figure

from transferkit.data.masks import overlay
from transferkit.data.transforms import PER_IMAGE_STANDARDISED
from transferkit.errors import ConfigError
from transferkit.evaluation.reports.seg_grid import denormalize

log = logging.getLogger(__name__)

CELL_PX = 128   # one panel, caption included
HEADER_PX = 32  # the title strip above the grid
DPI = 64        # whole inches per panel, so the PNG's size in pixels is exact
SHOW_AUGS_DEFAULTS = {"samples": 4, "variants": 6}  # the `show_augs` options: images, draws of each


@dataclass(frozen=True)
class AugmentGrid:
    """The panels of `save_augmentation_grid`, one row per sample, and which samples they show."""

    rows: list[list[np.ndarray]]
    captions: list[list[str]]
    indices: list[int]


def grid_pixel_size(rows: int, cols: int) -> tuple[int, int]:
    """(width, height) in pixels of the PNG that `save_augmentation_grid` writes."""
    return cols * CELL_PX, rows * CELL_PX + HEADER_PX


def to_rgb(image: np.ndarray) -> np.ndarray:
    """``uint8`` ``H x W`` or ``H x W x C`` (C = 1 or 3) -> ``H x W x 3``."""
    if image.ndim == 2:
        image = image[..., None]
    return np.repeat(image, 3, axis=-1) if image.shape[-1] == 1 else image[..., :3]


def tensor_to_display(image: torch.Tensor, mean: Sequence[float], std: Sequence[float],
                      per_image: bool) -> np.ndarray:
    """A pipeline's ``C x H x W`` output as ``H x W x 3`` ``uint8``.

    Standard normalisation is undone exactly; a per-image standardised tensor has lost its
    brightness and contrast, so it is shown stretched to its own min..max (what the model sees,
    up to that scale).
    """
    image = image.detach().cpu().float()
    if per_image:
        low, high = image.min(), image.max()
        scaled = (image - low) / (high - low) if high > low else torch.zeros_like(image)
        pixels = (scaled * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()
        return to_rgb(pixels)
    channels = image.shape[0]
    mean = list(mean) if len(mean) == channels else [float(np.mean(mean))] * channels
    std = list(std) if len(std) == channels else [float(np.mean(std))] * channels
    return denormalize(image[None], mean, std)[0]


def save_augmentation_grid(rows: Sequence[Sequence[np.ndarray]], captions: Sequence[Sequence[str]],
                           path: Path | str, title: str = "") -> Path:
    """One row per sample of ``H x W x 3`` ``uint8`` panels, each with a caption above it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    n_rows, n_cols = len(rows), max(len(row) for row in rows)
    width, height = grid_pixel_size(n_rows, n_cols)
    figure = Figure(figsize=(width / DPI, height / DPI), dpi=DPI)
    if title:
        figure.text(0.5, 1 - HEADER_PX / 2 / height, title, ha="center", va="center", fontsize=10)
    margin, caption = 6, 18  # pixels inside each cell
    for r, row in enumerate(rows):
        for c, panel in enumerate(row):
            left = (c * CELL_PX + margin) / width
            bottom = ((n_rows - 1 - r) * CELL_PX + margin) / height
            side = CELL_PX - margin - caption
            axes = figure.add_axes((left, bottom, side / width, side / height))
            axes.imshow(panel, interpolation="nearest")
            axes.set_axis_off()
            axes.set_title(captions[r][c], fontsize=8, pad=2)
    figure.savefig(path, dpi=DPI)
    log.info("Augmentation grid: %s", path)
    return path


def show_augs_options(given: dict | None) -> dict[str, int]:
    """The `show_augs` options over their defaults, checked."""
    options = {**SHOW_AUGS_DEFAULTS, **dict(given or {})}
    for key, value in options.items():
        if key not in SHOW_AUGS_DEFAULTS:
            raise ConfigError(f"show_augs.{key} is not an option; use {sorted(SHOW_AUGS_DEFAULTS)}.")
        if not isinstance(value, int) or value < 1:
            raise ConfigError(f"show_augs.{key}={value!r} must be a whole number >= 1.")
    return options


def choose_samples(labels: np.ndarray | None, count: int, seed: int, size: int) -> list[int]:
    """`count` indices of a `size`-long split, taking the classes in turn (seeded order within each)."""
    rng = np.random.default_rng(seed)
    if labels is None:
        return sorted(rng.permutation(size)[:count].tolist())
    per_class = [rng.permutation(np.flatnonzero(labels == c)).tolist() for c in np.unique(labels)]
    chosen: list[int] = []
    while len(chosen) < min(count, size):
        for members in per_class:
            if members and len(chosen) < count:
                chosen.append(members.pop(0))
    return chosen


def augment_row(sample: tuple, transform: Callable, variants: int,
                show: Callable[[object], np.ndarray]) -> list[np.ndarray]:
    """The decoded sample, then `variants` draws of `transform` (masks overlaid when present)."""
    image, target = sample
    mask = target if isinstance(target, np.ndarray) else None
    panels = [to_rgb(image) if mask is None else overlay(to_rgb(image), mask)]
    for _ in range(variants):
        if mask is None:
            panels.append(show(transform(image=image)["image"]))
        else:
            out = transform(image=image, mask=mask)
            panels.append(overlay(show(out["image"]), out["mask"].numpy()))
    return panels


def caption(datamodule, sample: tuple, index: int) -> str:
    target = sample[1]
    names = getattr(datamodule, "class_names", None)
    if isinstance(target, np.ndarray) or not names:
        return f"#{index}"
    return str(names[int(target)])[:16]


def train_labels(datamodule) -> np.ndarray | None:
    labels = getattr(datamodule, "labels", None)
    return labels("train") if callable(labels) else None


def draw_augmentations(datamodule, augment: str, samples: int, variants: int, seed: int) -> AugmentGrid:
    """`samples` training images of a scanned datamodule (classes in turn), each then under `variants`
    draws of its train pipeline (`augment` names it), shown as the model sees them."""
    source = datamodule.sources["train"]
    indices = choose_samples(train_labels(datamodule), samples, seed, len(source))
    transform = datamodule.transform(train=True)

    def show(image) -> np.ndarray:
        return tensor_to_display(image, datamodule.mean, datamodule.std, augment in PER_IMAGE_STANDARDISED)

    rows, captions = [], []
    for index in indices:
        sample = source[index]
        rows.append(augment_row(sample, transform, variants, show))
        captions.append([caption(datamodule, sample, index), *(f"aug {k + 1}" for k in range(variants))])
    return AugmentGrid(rows, captions, indices)
