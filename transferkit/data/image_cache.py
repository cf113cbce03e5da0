"""A decoded-image cache: resized ``uint8`` images kept in shared memory or a memory-mapped file.

The first epoch decodes each image once and stores it downscaled (shorter side
``ceil(image_size * scale)``, never upscaled); later epochs read the stored pixels and
skip decoding. Storage is shared by DataLoader workers: anonymous shared memory is
inherited by forked workers, a file under ``directory`` by any process.
"""

from __future__ import annotations

import logging
import math
import mmap
import os
import uuid
import weakref
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from torch.utils.data import Dataset

log = logging.getLogger(__name__)

CACHE_SCALE = 1.15  # head-room above image_size so random crops keep detail
MAX_ASPECT = 2.0  # longer side stored at most this many times the shorter side
HEADER_FIELDS = 4  # height, width, channels, label; height 0 marks an empty slot


def cache_size(height: int, width: int, short_side: int, max_aspect: float = MAX_ASPECT) -> tuple[int, int]:
    """Stored ``(height, width)``: shorter side down to ``short_side``, longer side capped, no upscaling."""
    scale = min(1.0, short_side / min(height, width))
    scale = min(scale, short_side * max_aspect / max(height, width))
    return max(1, round(height * scale)), max(1, round(width * scale))


def resize_for_cache(image: np.ndarray, short_side: int, max_aspect: float = MAX_ASPECT) -> np.ndarray:
    """Downscale ``image`` (``H x W x C``) with area interpolation to fit a cache slot."""
    height, width = cache_size(image.shape[0], image.shape[1], short_side, max_aspect)
    if (height, width) == image.shape[:2]:
        return image
    resized = cv2.resize(image, (width, height), interpolation=cv2.INTER_AREA)
    return resized.reshape(height, width, image.shape[2])


def remove_files(paths: list[Path], owner_pid: int) -> None:
    # Forked workers inherit this finalizer; only the process that created the files deletes them.
    if os.getpid() == owner_pid:
        for path in paths:
            path.unlink(missing_ok=True)


class DecodedImageCache(Dataset):
    """Wrap a source of ``(uint8 H x W x C image, label)`` so each image is decoded only once."""

    def __init__(self, source: Dataset, image_size: int, directory: str | Path | None = None,
                 scale: float = CACHE_SCALE) -> None:
        if image_size < 1:
            raise ValueError(f"data.image_size={image_size!r} must be a positive number of pixels.")
        self.source = source
        self.num_items = len(source)
        self.short_side = math.ceil(image_size * scale)
        channels = int(getattr(source, "in_chans", 3))
        self.slot_bytes = int(self.short_side * self.short_side * MAX_ASPECT) * channels
        self.paths: list[Path] | None = None
        if directory is not None:
            Path(directory).mkdir(parents=True, exist_ok=True)
            stem = Path(directory) / f"decoded-{uuid.uuid4().hex[:12]}"
            self.paths = [stem.with_suffix(".pixels"), stem.with_suffix(".header")]
            weakref.finalize(self, remove_files, list(self.paths), os.getpid())
        self._pixels, self._header = self._allocate(create=True)
        log.info("Decoded-image cache: %d slots of %d bytes (%.1f MiB reserved) in %s.",
                 self.num_items, self.slot_bytes, self.num_items * self.slot_bytes / 2**20,
                 self.paths[0] if self.paths else "shared memory")

    def _allocate(self, create: bool) -> tuple[np.ndarray, np.ndarray]:
        pixel_count, header_count = self.num_items * self.slot_bytes, self.num_items * HEADER_FIELDS
        if self.paths is None:
            # MAP_SHARED anonymous memory: forked DataLoader workers write into the same pages.
            pixels = np.frombuffer(mmap.mmap(-1, max(1, pixel_count)), dtype=np.uint8)
            header = np.frombuffer(mmap.mmap(-1, max(8, header_count * 8)), dtype=np.int64)
        else:
            mode = "w+" if create else "r+"
            pixels = np.memmap(self.paths[0], dtype=np.uint8, mode=mode, shape=(max(1, pixel_count),))
            header = np.memmap(self.paths[1], dtype=np.int64, mode=mode, shape=(max(1, header_count),))
        return pixels, header[:header_count].reshape(self.num_items, HEADER_FIELDS)

    def __getstate__(self) -> dict[str, Any]:
        # Spawned workers reopen the file; anonymous memory cannot travel, so they get their own.
        state = self.__dict__.copy()
        del state["_pixels"], state["_header"]
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._pixels, self._header = self._allocate(create=self.paths is None)

    def __len__(self) -> int:
        return self.num_items

    def cached(self, index: int) -> bool:
        return bool(self._header[index, 0])

    def __getitem__(self, index: int) -> tuple[np.ndarray, int]:
        height, width, channels, label = (int(v) for v in self._header[index])
        if height:
            start = index * self.slot_bytes
            stored = self._pixels[start:start + height * width * channels]
            return stored.reshape(height, width, channels).copy(), label
        image, label = self.source[index]
        small = np.ascontiguousarray(resize_for_cache(image, self.short_side))
        if small.ndim != 3 or small.size > self.slot_bytes:
            raise ValueError(
                f"Image {index} has shape {image.shape}, which does not fit a cache slot of "
                f"{self.slot_bytes} bytes; the source must yield H x W x in_chans uint8 arrays."
            )
        start = index * self.slot_bytes
        self._pixels[start:start + small.size] = small.reshape(-1)
        # Height goes last: a slot counts as filled only once everything else is in place.
        self._header[index, 1:] = (small.shape[1], small.shape[2], int(label))
        self._header[index, 0] = small.shape[0]
        return small, int(label)
