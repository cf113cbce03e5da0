"""The images predict reads: the input files, decoded and prepared in loader workers."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

log = logging.getLogger("transferkit")


def list_inputs(path: Path) -> list[Path]:
    """One image file, or every image under a folder (hidden files and junk skipped)."""
    from transferkit.data.walk import Findings, is_image_file, walk_images

    if path.is_file():
        if not is_image_file(path.name):
            raise ValueError(f"input={str(path)!r} is not an image file (png, jpg, webp, bmp, tif, gif).")
        return [path]
    findings = Findings()
    images, _ = walk_images(path, findings)
    for note in findings.link_notes(path):
        log.warning("input: %s", note)
    if not images:
        raise FileNotFoundError(f"input={str(path)!r} holds no image files.")
    return images


def as_tensor(prepared) -> torch.Tensor:
    """A transform's output as a tensor (the resize-only pipeline returns a uint8 numpy array)."""
    return prepared if isinstance(prepared, torch.Tensor) else torch.from_numpy(np.require(prepared, requirements=["C", "W"]))


class PredictDataset(Dataset):
    """Decoded + prepared images; unreadable files yield an empty tensor and their reason."""

    def __init__(self, paths: list[Path], in_chans: int, transform) -> None:
        self.paths, self.in_chans, self.transform = paths, in_chans, transform

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int):
        from transferkit.data.decode import load_image

        try:
            image = load_image(self.paths[index], in_chans=self.in_chans)
        except (OSError, ValueError) as err:
            return torch.zeros(0), index, str(err)
        return as_tensor(self.transform(image=image)["image"]), index, ""


def collate(batch):
    """`(images, indices of readable files, [(index, reason) of unreadable files])`."""
    good = [b for b in batch if b[0].numel()]
    images = torch.stack([b[0] for b in good]) if good else torch.zeros(0)
    return images, [b[1] for b in good], [(b[1], b[2]) for b in batch if not b[0].numel()]
