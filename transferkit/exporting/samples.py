"""The images parity is checked on: `input=` (a file or folder), else the checkpoint run's own test
split (its val split when it has no test split), prepared exactly as predict prepares them; and the
training images an INT8 export is calibrated on."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch

from transferkit.errors import ConfigError
from transferkit.data.decode import UnreadableImageError, load_image
from transferkit.data.inputs import InputSpec, as_tensor, list_inputs
from transferkit.data.sources import match_image_channels

log = logging.getLogger("transferkit")

Item = tuple[str, np.ndarray, int | None]  # (file or sample name, uint8 H x W x C, class index if known)
Samples = tuple[str, int, Iterator[Item]]  # (where, how many, the items)


def input_items(source: Path, in_chans: int) -> Samples:
    """Images of `input=`; unreadable files are skipped with a warning, as predict skips them."""
    paths = list_inputs(source)

    def items() -> Iterator[Item]:
        for path in paths:
            try:
                yield str(path), load_image(path, in_chans=in_chans), None
            except UnreadableImageError as error:
                log.warning("parity: skipped %s: %s", path, error.reason)

    return f"input={source}", len(paths), items()


def item_name(source, index: int, fallback: str) -> str:
    items = getattr(source, "items", None) or getattr(getattr(source, "source", None), "items", None)
    if items:
        return str(items[index][0])
    pairs = getattr(source, "pairs", None)
    return str(pairs[index][0]) if pairs else f"{fallback}[{index}]"


def class_index(label) -> int | None:
    """A classification sample's class; None for a segmentation sample (its label is a mask)."""
    return int(label) if np.ndim(label) == 0 else None


def split_items(datamodule, task, in_chans: int, root: str | None, split: str | None = None) -> Samples:
    """The scanned datamodule's `split` (default: its test split, its val split when it has none), checked
    against the task's classes (`root`: data.root, for the error)."""
    if list(datamodule.class_names) != list(task.class_names):
        raise ConfigError(f"data.root={root!r} has classes {list(datamodule.class_names)} but the "
                          f"checkpoint was trained on {list(task.class_names)}; pass input=<images> for the "
                          "parity check, or point data.root at the run's data.")
    split = split or ("test" if len(datamodule.sources.get("test", ())) else "val")
    source = datamodule.sources[split]
    where = f"{datamodule.describe()} {split} split"

    def items() -> Iterator[Item]:
        for i in range(len(source)):
            image, label = source[i]
            yield item_name(source, i, f"{datamodule.describe()}/{split}"), match_image_channels(image, in_chans), class_index(label)

    return where, len(source), items()


def calibration_items(datamodule, in_chans: int, count: int) -> Samples:
    """`count` training images drawn at random (seed 0; every image when the split is smaller), in file order."""
    source = datamodule.sources["train"]
    chosen = np.sort(np.random.default_rng(0).permutation(len(source))[:count])
    where = f"{datamodule.describe()} train split"

    def items() -> Iterator[Item]:
        for i in chosen:
            image, label = source[int(i)]
            yield item_name(source, int(i), f"{datamodule.describe()}/train"), match_image_channels(image, in_chans), class_index(label)

    return where, len(chosen), items()


def parity_batches(items: Iterator[Item], spec: InputSpec, uint8_input: bool, batch_size: int,
                   limit: int | None = None):
    """`(names, normalised float32 N x C x H x W, the exported model's input, labels)` per batch."""
    normalise, resize = spec.eval_transform(), spec.resize_transform()
    chunk: list[Item] = []
    for count, item in enumerate(items):
        if limit is not None and count >= limit:
            break
        chunk.append(item)
        if len(chunk) == batch_size:
            yield prepare(chunk, normalise, resize, uint8_input)
            chunk = []
    if chunk:
        yield prepare(chunk, normalise, resize, uint8_input)


def prepare(chunk: list[Item], normalise, resize, uint8_input: bool):
    names, labels = [item[0] for item in chunk], [item[2] for item in chunk]
    floats = torch.stack([normalise(image=item[1])["image"] for item in chunk])
    if not uint8_input:
        return names, floats, floats, labels
    return names, floats, torch.stack([as_tensor(resize(image=item[1])["image"]) for item in chunk]), labels
