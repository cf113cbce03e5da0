"""The audited images as one table: name, split, label, fingerprint, and where the pixels come from.

A folder's images are named by their path relative to `data.root` and fingerprinted by the scan's own
decode pass; the embedded data's are named `<split>/<index>` and fingerprinted here, from memory.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from torch.utils.data import Dataset

from transferkit.data.fingerprints import DIGEST_BYTES, fingerprint_array
from transferkit.data.sources import FileSource
from transferkit.data.splits import relative_path

SPLITS = ("train", "val", "test")


@dataclass(frozen=True)
class AuditImages:
    """Every labelled image of the scanned splits, in split order (train, val, test)."""

    names: list[str]
    splits: np.ndarray        # N split names
    labels: np.ndarray        # N int64
    class_names: list[str]
    digests: np.ndarray       # N raw pixel digests
    thumbs: np.ndarray        # N x 16 x 16 uint8
    items: list               # N: a file path, or the index into `sources[split]` (embedded data)
    sources: dict[str, Dataset]  # split -> raw `(uint8 image, label)` dataset, in the order of `names`
    root: str | None

    def __len__(self) -> int:
        return len(self.names)

    @property
    def files(self) -> bool:
        return self.root is not None

    def pixels(self, i: int):
        """Image `i` for a predictor or a thumbnail: its file path, or its uint8 pixels."""
        item = self.items[i]
        return item if isinstance(item, Path) else self.sources[str(self.splits[i])][item][0]

    def split_indices(self, split: str) -> np.ndarray:
        return np.flatnonzero(self.splits == split)


def file_items(source: Dataset) -> list[tuple[Path, int]] | None:
    """The `(path, label)` items of a source built on files (through caches and wrappers), else None."""
    while source is not None and not hasattr(source, "items"):
        source = getattr(source, "source", None)
    return None if source is None else list(source.items)


def audit_images(datamodule) -> AuditImages:
    """The table of a scanned datamodule: a folder's fingerprints come from its scan."""
    names, splits, labels, digests, thumbs, items, sources = [], [], [], [], [], [], {}
    prints = getattr(datamodule, "fingerprints", None)
    root = Path(datamodule.root) if getattr(datamodule, "root", None) is not None else None
    for split in SPLITS:
        source = datamodule.sources.get(split)
        if source is None or not len(source):
            continue
        found = file_items(source) if root is not None else None
        if found is not None:
            sources[split] = FileSource(found, in_chans=datamodule.in_chans, background=datamodule.background)
            for path, label in found:
                index = prints.index[path]
                names.append(relative_path(path, prints_root(datamodule, root)))
                digests.append(bytes(prints.digests[index]))
                thumbs.append(prints.thumbs[index])
                items.append(Path(path))
                labels.append(label)
        else:
            sources[split] = source
            for i in range(len(source)):
                image, label = source[i]
                digest, thumb = fingerprint_array(image)
                names.append(f"{split}/{i}")
                digests.append(digest)
                thumbs.append(thumb)
                items.append(i)
                labels.append(int(label))
        splits += [split] * len(source)
    return AuditImages(names, np.array(splits, dtype=object), np.asarray(labels, dtype=np.int64),
                       list(datamodule.class_names), np.array(digests, dtype=f"S{DIGEST_BYTES}"),
                       np.stack(thumbs), items, sources, None if root is None else str(root))


def prints_root(datamodule, root: Path) -> Path:
    """The root the scan recorded (splits.json's), so audit's paths and splits.json's agree."""
    recorded = (getattr(datamodule, "split_record", None) or {}).get("root")
    return Path(recorded) if recorded else root
