"""Pictures of segmentations: image / truth / prediction grids, and the callback
that draws the validation preview grid during training."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytorch_lightning as pl
import torch
from matplotlib.figure import Figure

from transferkit.data.masks import Colour, colourise

log = logging.getLogger(__name__)

GRID_SAMPLES = 4


def denormalize(images: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> np.ndarray:
    """Normalised ``N x C x H x W`` floats -> ``N x H x W x 3`` ``uint8`` (grey repeated to RGB)."""
    mean_t = torch.as_tensor(list(mean), dtype=images.dtype).view(1, -1, 1, 1)
    std_t = torch.as_tensor(list(std), dtype=images.dtype).view(1, -1, 1, 1)
    pixels = (images.detach().cpu() * std_t + mean_t).clamp(0, 1) * 255
    array = pixels.round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
    return np.repeat(array, 3, axis=-1) if array.shape[-1] == 1 else array


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


class SegmentationGridCallback(pl.Callback):
    """Write ``<run_dir>/seg_grid.png`` (image / truth / prediction) after every validation epoch.

    Keeps the first ``samples`` items of the first validation batch with the predicted class ids
    that the task's ``validation_step`` returns. Only global rank 0 draws; the sanity check draws
    nothing.
    """

    def __init__(self, run_dir: Path | str, samples: int = GRID_SAMPLES) -> None:
        if samples < 0:
            raise ValueError(f"task.grid_samples={samples!r} must be >= 0 (0 draws no grid).")
        self.path = Path(run_dir) / "seg_grid.png"
        self.samples = samples
        self.batch: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None

    def _drawing(self, trainer: pl.Trainer) -> bool:
        return bool(self.samples) and trainer.is_global_zero and not trainer.sanity_checking

    def on_validation_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.batch = None

    def on_validation_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs,
                                batch, batch_idx: int, dataloader_idx: int = 0) -> None:
        if batch_idx or dataloader_idx or not self._drawing(trainer) or not torch.is_tensor(outputs):
            return
        n = self.samples
        self.batch = (batch[0][:n].detach().cpu(), batch[1][:n].detach().cpu(), outputs[:n].detach().cpu())

    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.batch is None or not self._drawing(trainer):
            return
        images, truths, preds = self.batch
        config = getattr(pl_module, "data_config", None) or {}
        in_chans = images.shape[1]
        mean = config.get("mean") or [0.5] * in_chans
        std = config.get("std") or [0.5] * in_chans
        save_segmentation_grid(denormalize(images, mean, std), truths.numpy(), preds.numpy(), self.path,
                               class_names=getattr(pl_module, "class_names", None))
