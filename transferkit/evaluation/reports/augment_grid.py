"""Pictures of augmentation: each sample as decoded, then several draws of the train pipeline."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from matplotlib.figure import Figure

from transferkit.evaluation.reports.seg_grid import denormalize

log = logging.getLogger(__name__)

CELL_PX = 128   # one panel, caption included
HEADER_PX = 32  # the title strip above the grid
DPI = 64        # whole inches per panel, so the PNG's size in pixels is exact


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
