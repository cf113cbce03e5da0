"""`RemoteFileSource`: the images of an object store, fetched and decoded lazily, one object a sample."""

from __future__ import annotations

import io
from collections.abc import Sequence
from pathlib import PurePosixPath

import numpy as np
from torch.utils.data import Dataset

from transferkit.data.decode import UnreadableImageError, load_image
from transferkit.data.streaming.store import ObjectStore
from transferkit.data.vanished import SkipLog, SkippedImage


class RemoteFileSource(Dataset):
    """`FileSource` for `data.root=s3://...`: `(uint8 H x W x C image, label)` through the one decode path.

    An object that is gone or cannot be decoded is recorded in `skips` and raised as `SkippedImage`
    (skipped like a local file that vanished); a store that stays unreachable stops the run, naming it.
    """

    def __init__(self, items: Sequence[tuple[PurePosixPath, int]], store: ObjectStore, in_chans: int = 3,
                 background: tuple[int, int, int] = (255, 255, 255), skips: SkipLog | None = None) -> None:
        self.items = list(items)
        self.store = store
        self.in_chans = in_chans
        self.background = tuple(background)
        self.skips = skips

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> tuple[np.ndarray, int]:
        path, label = self.items[index]
        uri = self.store.uri_of(path)
        try:
            try:
                data = self.store.read_bytes(path)
            except FileNotFoundError as err:
                raise UnreadableImageError(uri, "object not found") from err
            buffer = io.BytesIO(data)
            buffer.name = uri
            return load_image(buffer, in_chans=self.in_chans, background=self.background), label
        except UnreadableImageError as err:
            if self.skips is None:
                raise
            self.skips.record(uri, err.reason)
            raise SkippedImage(uri, err.reason) from err

    def subset(self, indices: Sequence[int]) -> RemoteFileSource:
        return RemoteFileSource([self.items[i] for i in indices], self.store, self.in_chans, self.background,
                                self.skips)
