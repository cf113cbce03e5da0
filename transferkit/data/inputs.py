"""What a model expects as input and the images predict and export read.

`InputSpec` is the one description of inference preprocessing: predict builds it from a
checkpoint's `data_config`, export writes it into `model.meta.json`, and predict from an exported
file reads it back from there. `list_inputs` finds the images of `input=` (a file or a folder).
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from transferkit.data.transforms import PER_IMAGE_STANDARDISED, build_eval_resize, build_transforms
from transferkit.data.walk import Findings, is_image_file, walk_images

log = logging.getLogger("transferkit")

DEFAULT_BACKGROUND = (255, 255, 255)  # what `data.decode.load_image` composites transparency on


@dataclass(frozen=True)
class InputSpec:
    """How an image file becomes model input: decode to `in_chans` channels, resize (stretch, no crop)
    to `image_size` x `image_size` with `interpolation` (OpenCV), then normalise: `mean_std` is
    `(pixel / 255 - mean) / std` per channel, `per_image` is `(x - mean(x)) / max(std(x), 1/sqrt(N))`
    over the whole image."""

    image_size: int
    in_chans: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    interpolation: str = "bilinear"
    normalization: str = "mean_std"
    background: tuple[int, int, int] = DEFAULT_BACKGROUND

    @classmethod
    def from_data_config(cls, data: dict) -> "InputSpec":
        """The spec of a checkpoint's `data_config` (builders.data_config)."""
        normalization = "per_image" if data.get("augment") in PER_IMAGE_STANDARDISED else "mean_std"
        return cls(int(data["image_size"]), int(data["in_chans"]), tuple(float(v) for v in data["mean"]),
                   tuple(float(v) for v in data["std"]), str(data.get("interpolation", "bilinear")),
                   normalization)

    @classmethod
    def from_dict(cls, record: dict) -> "InputSpec":
        return cls(int(record["image_size"]), int(record["in_chans"]), tuple(record["mean"]), tuple(record["std"]),
                   str(record["interpolation"]), str(record["normalization"]),
                   tuple(record.get("background", DEFAULT_BACKGROUND)))

    def to_dict(self) -> dict:
        return {**asdict(self), "mean": list(self.mean), "std": list(self.std), "background": list(self.background)}

    def eval_transform(self):
        """albumentations pipeline: uint8 H x W x C -> normalised float32 C x H x W tensor."""
        name = "cifar" if self.normalization == "per_image" else "none"  # eval pipelines differ only here
        return build_transforms(name, train=False, image_size=self.image_size, mean=self.mean, std=self.std,
                                in_chans=self.in_chans, interpolation=self.interpolation)

    def resize_transform(self):
        """The same resize without normalisation: uint8 H x W x C -> uint8 image_size x image_size x C."""
        return build_eval_resize(self.image_size, self.interpolation)


def as_tensor(prepared) -> torch.Tensor:
    """A transform's output as a tensor (the resize-only pipeline returns a uint8 numpy array)."""
    return prepared if isinstance(prepared, torch.Tensor) else torch.from_numpy(np.require(prepared, requirements=["C", "W"]))


def list_inputs(path: Path) -> list[Path]:
    """One image file, or every image under a folder (hidden files and junk skipped)."""
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
