"""Predicted masks as files: a palette index PNG and a colour overlay per image (no Lightning, so
predict from an exported model can write them too)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from transferkit.data.masks import Colour, colourise


def overlay(image: np.ndarray, mask: np.ndarray, palette: Sequence[Colour] | None = None,
            alpha: float = 0.5) -> np.ndarray:
    """Blend the colourised ``mask`` over ``image`` (``H x W x 3`` ``uint8``); class 0 stays clear."""
    if image.ndim == 2 or image.shape[-1] == 1:
        image = np.repeat(image.reshape(*image.shape[:2], 1), 3, axis=-1)
    colours = colourise(mask, palette).astype(np.float32)
    weight = np.where(mask[..., None] > 0, alpha, 0.0).astype(np.float32)
    blended = image.astype(np.float32) * (1 - weight) + colours * weight
    return np.clip(np.rint(blended), 0, 255).astype(np.uint8)


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
