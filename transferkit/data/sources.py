"""Map-style datasets of raw samples `(uint8 H x W x C image, label)` and their transformed view."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from transferkit.data.decode import UnreadableImageError, load_image
from transferkit.data.streaming.store import NamedBytes, ObjectStore
from transferkit.data.vanished import SkipLog, SkippedImage, SkipsUnreadable


def match_image_channels(image: np.ndarray, in_chans: int) -> np.ndarray:
    """Return `image` as H x W x in_chans (grey repeated to RGB, RGB averaged to grey)."""
    if image.ndim == 2:
        image = image[..., None]
    channels = image.shape[-1]
    if channels == in_chans:
        return image
    if in_chans == 1:
        return image.mean(axis=-1, keepdims=True).round().astype(np.uint8)
    if channels == 1:
        return np.repeat(image, in_chans, axis=-1)
    return np.concatenate([image] * (in_chans // channels + 1), axis=-1)[..., :in_chans]


class FileSource(Dataset):
    """Images read through the one decode path (`data.decode.load_image`): files on disk, or with `store` the
    objects of an object store (`data.root=s3://...`; `items` are then `bucket/prefix/...` paths, fetched lazily).
    With `skips`, a file or object that became unreadable since the scan is recorded there (an object by its URI)
    and raised as `SkippedImage` (data.vanished); a store that stays unreachable stops the run, naming it."""

    def __init__(self, items: Sequence[tuple[Path, int]], in_chans: int = 3,
                 background: tuple[int, int, int] = (255, 255, 255), skips: SkipLog | None = None,
                 store: ObjectStore | None = None) -> None:
        self.items = list(items)
        self.in_chans = in_chans
        self.background = tuple(background)
        self.skips = skips
        self.store = store

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> tuple[np.ndarray, int]:
        path, label = self.items[index]
        try:
            return load_image(open_item(path, self.store), in_chans=self.in_chans, background=self.background), label
        except UnreadableImageError as err:
            if self.skips is None:
                raise
            where = path if self.store is None else self.store.uri_of(path)
            self.skips.record(where, err.reason)
            raise SkippedImage(where, err.reason) from err


def open_item(path: Path, store: ObjectStore | None) -> Path | NamedBytes:
    """What the decode path opens for `path`: the file itself, or the object's bytes named by its URI."""
    return path if store is None else store.open_file(path)


class ArraySource(Dataset):
    """Images held in memory as a uint8 array N x H x W x C."""

    def __init__(self, images: np.ndarray, labels: Sequence[int], in_chans: int = 3) -> None:
        if len(images) != len(labels):
            raise ValueError(f"{len(images)} images but {len(labels)} labels.")
        self.images = images
        self.labels = np.asarray(labels, dtype=np.int64)
        self.in_chans = in_chans

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> tuple[np.ndarray, int]:
        return match_image_channels(self.images[index], self.in_chans), int(self.labels[index])


class TransformedDataset(SkipsUnreadable, Dataset):
    """Apply an albumentations pipeline to a source; yields `(float tensor C x H x W, label)`.

    An image that became unreadable mid-run (`SkippedImage`) is replaced by a readable neighbour, or, with
    `drop_unreadable` (for a loader collating with `data.vanished.collate_readable`), yields an
    `Unreadable` marker that the batch drops."""

    def __init__(self, source: Dataset, transform: Callable, drop_unreadable: bool = False) -> None:
        self.source = source
        self.transform = transform
        self.drop_unreadable = drop_unreadable

    def __len__(self) -> int:
        return len(self.source)

    def load(self, index: int) -> tuple[torch.Tensor, int]:
        image, label = self.source[index]  # an index past the end raises IndexError: `for x in dataset` ends
        return self.transform(image=image)["image"], label



class ViewsDataset(Dataset):
    """Each raw sample prepared by several pipelines (one per ensemble member, each its own size and
    normalisation): yields `(tuple of C x H x W tensors, label)`; with `with_mask` the mask is moved
    by the first pipeline and yielded in place of the label."""

    def __init__(self, source: Dataset, transforms: Sequence[Callable], in_chans: Sequence[int],
                 with_mask: bool = False) -> None:
        if len(transforms) != len(in_chans):
            raise ValueError(f"{len(transforms)} pipelines but {len(in_chans)} channel counts.")
        self.source, self.transforms, self.in_chans = source, list(transforms), list(in_chans)
        self.with_mask = with_mask

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, index: int):
        image, target = self.source[index]
        views = []
        for k, (transform, channels) in enumerate(zip(self.transforms, self.in_chans)):
            pixels = match_image_channels(image, channels)
            if self.with_mask and k == 0:
                out = transform(image=pixels, mask=target)
                target = out["mask"].long()
            else:
                out = transform(image=pixels)
            views.append(out["image"])
        return tuple(views), target


class SubsetSource(Dataset):
    """The items ``indices`` of ``source``, in that order, with their ``labels`` known up front."""

    def __init__(self, source: Dataset, indices: Sequence[int], labels: Sequence[int]) -> None:
        if len(indices) != len(labels):
            raise ValueError(f"{len(indices)} indices but {len(labels)} labels.")
        self.source = source
        self.indices = [int(i) for i in indices]
        self.labels = np.asarray(labels, dtype=np.int64)

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, index: int) -> tuple[np.ndarray, int]:
        return self.source[self.indices[index]]


class ConcatSource(Dataset):
    """The items of ``sources`` one after another, with their labels known up front."""

    def __init__(self, sources: Sequence[Dataset]) -> None:
        self.sources = list(sources)
        labels = [source_labels(s) for s in self.sources]
        self.labels = np.concatenate(labels) if labels else np.zeros(0, np.int64)
        self.starts = np.cumsum([0, *(len(s) for s in self.sources)])

    def __len__(self) -> int:
        return int(self.starts[-1])

    def __getitem__(self, index: int) -> tuple[np.ndarray, int]:
        part = int(np.searchsorted(self.starts, index, side="right")) - 1
        return self.sources[part][index - int(self.starts[part])]


def pool_sources(first: Dataset, second: Dataset) -> Dataset:
    """``first`` then ``second`` as one source (k-fold pools train and val before splitting them)."""
    if isinstance(first, ArraySource) and isinstance(second, ArraySource) and first.in_chans == second.in_chans \
            and first.images.shape[1:] == second.images.shape[1:]:
        return ArraySource(np.concatenate([first.images, second.images]),
                           np.concatenate([first.labels, second.labels]), in_chans=first.in_chans)
    return ConcatSource([first, second])


def subset_source(source: Dataset, indices: Sequence[int], labels: np.ndarray) -> Dataset:
    """Keep the items ``indices`` of ``source`` (``labels``: the labels of all of its items)."""
    indices = np.asarray(indices, dtype=np.int64)
    if isinstance(source, ArraySource):
        return ArraySource(source.images[indices], source.labels[indices], in_chans=source.in_chans)
    if isinstance(source, FileSource):
        return FileSource([source.items[i] for i in indices], source.in_chans, source.background, source.skips,
                          source.store)
    return SubsetSource(source, indices, labels[indices])


def source_labels(source: Dataset) -> np.ndarray:
    """Every label of ``source`` as int64, read without decoding images where the source allows it."""
    labels = getattr(source, "labels", None)
    if labels is not None:
        return np.asarray(labels, dtype=np.int64)
    items = getattr(source, "items", None) or getattr(getattr(source, "source", None), "items", None)
    if items is not None:
        return np.asarray([label for _, label in items], dtype=np.int64)
    return np.asarray([source[i][1] for i in range(len(source))], dtype=np.int64)
