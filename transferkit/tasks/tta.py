"""Test-time augmentation (`tta=flip|multiscale|none`): average a model's probabilities over views.

`flip` adds the left-right mirror of each image, only for models trained with flips (a mirrored
digit is not a digit); `multiscale` resizes the preprocessed batch to x0.875, x1 and x1.125 of its
size. For segmentation the per-pixel probabilities of each view are mapped back onto the input's
pixels (the mirror undone, the size restored) before they are averaged.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from transferkit.errors import lookup

TTA_MODES = ("none", "flip", "multiscale")
MULTISCALE = (0.875, 1.0, 1.125)


def check_tta(mode: str | None) -> str:
    """The `tta` value, validated (None reads as none)."""
    mode = "none" if mode is None else str(mode)
    return lookup({m: m for m in TTA_MODES}, mode, "tta")


def multiscale_sizes(size: int) -> list[int]:
    """The sides `tta=multiscale` feeds the model for an input side `size` (e.g. 224 -> 196, 224, 252)."""
    return [max(8, round(size * scale)) for scale in MULTISCALE]


def resize_batch(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=True)


def resize_scores(scores: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Per-pixel logits or probabilities `N x C x h x w` resized bilinearly to `size` (e.g. an image's own)."""
    return F.interpolate(scores, size=tuple(size), mode="bilinear", align_corners=False)


def tta_probabilities(forward: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, mode: str,
                      flips: bool, segmentation: bool, multilabel: bool = False) -> torch.Tensor:
    """Softmax (multi-label: sigmoid) probabilities of `forward(x)` averaged over the views of `mode`.

    Classification gives N x C; segmentation N x C x H x W on the pixels of `x`. With `flips`
    False (the model never saw mirrored images) `flip` adds no view.
    """
    def probabilities(view: torch.Tensor) -> torch.Tensor:
        logits = forward(view).float()
        probs = torch.sigmoid(logits) if multilabel else torch.softmax(logits, dim=1)
        if segmentation and probs.shape[-2:] != x.shape[-2:]:
            probs = resize_scores(probs, x.shape[-2:])
        return probs

    match check_tta(mode):
        case "none":
            return probabilities(x)
        case "flip":
            if not flips:
                return probabilities(x)
            mirrored = probabilities(torch.flip(x, dims=[-1]))
            if segmentation:  # undo the mirror, so each pixel's probabilities are its own
                mirrored = torch.flip(mirrored, dims=[-1])
            return (probabilities(x) + mirrored) / 2
        case "multiscale":
            height, width = x.shape[-2:]
            views = [resize_batch(x, (h, w)) for h, w in zip(multiscale_sizes(height), multiscale_sizes(width))]
            return torch.stack([probabilities(view) for view in views]).mean(dim=0)
        case _:
            raise ValueError(f"tta={mode!r} is unknown; use one of {list(TTA_MODES)}.")
