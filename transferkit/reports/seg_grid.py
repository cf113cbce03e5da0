"""Pictures of segmentations: image / truth / prediction grids and colour overlays."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from matplotlib.figure import Figure

from transferkit.data.masks import Colour, colourise

log = logging.getLogger(__name__)


def denormalize(images: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> np.ndarray:
    """Normalised ``N x C x H x W`` floats -> ``N x H x W x 3`` ``uint8`` (grey repeated to RGB)."""
    mean_t = torch.as_tensor(list(mean), dtype=images.dtype).view(1, -1, 1, 1)
    std_t = torch.as_tensor(list(std), dtype=images.dtype).view(1, -1, 1, 1)
    pixels = (images.detach().cpu() * std_t + mean_t).clamp(0, 1) * 255
    array = pixels.round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
    return np.repeat(array, 3, axis=-1) if array.shape[-1] == 1 else array


def overlay(image: np.ndarray, mask: np.ndarray, palette: Sequence[Colour] | None = None,
            alpha: float = 0.5) -> np.ndarray:
    """Blend the colourised ``mask`` over ``image`` (``H x W x 3`` ``uint8``); class 0 stays clear."""
    if image.ndim == 2 or image.shape[-1] == 1:
        image = np.repeat(image.reshape(*image.shape[:2], 1), 3, axis=-1)
    colours = colourise(mask, palette).astype(np.float32)
    weight = np.where(mask[..., None] > 0, alpha, 0.0).astype(np.float32)
    blended = image.astype(np.float32) * (1 - weight) + colours * weight
    return np.clip(np.rint(blended), 0, 255).astype(np.uint8)


def save_segmentation_grid(images: np.ndarray, truths: np.ndarray, preds: np.ndarray,
                           path: Path | str, palette: Sequence[Colour] | None = None,
                           class_names: Sequence[str] | None = None) -> Path:
    """One row per sample: image, ground truth, prediction (masks in palette colours)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    rows = len(images)
    figure = Figure(figsize=(6, 2 * rows + 0.4), dpi=100)
    axes = figure.subplots(rows, 3, squeeze=False)
    for row in range(rows):
        panels = (images[row], colourise(truths[row], palette), colourise(preds[row], palette))
        for col, (panel, title) in enumerate(zip(panels, ("image", "truth", "prediction"))):
            axes[row, col].imshow(panel, interpolation="nearest")
            axes[row, col].set_axis_off()
            if row == 0:
                axes[row, col].set_title(title)
    if class_names:
        table = colourise(np.arange(len(class_names)), palette) / 255.0
        handles = [_patch(colour, name) for colour, name in zip(table, class_names)]
        figure.legend(handles=handles, loc="lower center", ncol=min(len(handles), 5), fontsize=8)
    figure.tight_layout(rect=(0, 0.05 if class_names else 0, 1, 1))
    figure.savefig(path)
    log.info("Segmentation grid: %s", path)
    return path


def _patch(colour: np.ndarray, name: str):
    from matplotlib.patches import Patch

    return Patch(facecolor=tuple(colour), edgecolor="black", label=name)


def save_prediction_pngs(image: np.ndarray, mask: np.ndarray, directory: Path | str, stem: str,
                         palette: Sequence[Colour] | None = None) -> tuple[Path, Path]:
    """Write ``<stem>_mask.png`` (palette index PNG of class ids) and ``<stem>_overlay.png``."""
    from PIL import Image

    from transferkit.data.masks import write_index_png

    directory = Path(directory)
    mask_path = write_index_png(mask, directory / f"{stem}_mask.png", palette)
    overlay_path = directory / f"{stem}_overlay.png"
    Image.fromarray(overlay(image, mask, palette)).save(overlay_path)
    return mask_path, overlay_path
