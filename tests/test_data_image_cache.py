"""The decoded-image cache: sizes, hits skip decoding, sharing across workers and processes."""

from __future__ import annotations

import gc
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, Dataset

from transferkit.data.image_cache import DecodedImageCache, cache_size, resize_for_cache


class CountingSource(Dataset):
    """Images whose pixel values encode their index; counts decodes."""

    def __init__(self, n: int, shape: tuple[int, int, int] = (60, 90, 3)) -> None:
        self.n, self.shape, self.calls = n, shape, 0
        self.in_chans = shape[2]

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, index: int) -> tuple[np.ndarray, int]:
        self.calls += 1
        return np.full(self.shape, index * 10, np.uint8), index % 3


@pytest.mark.parametrize(
    ("size", "expected"),
    [((480, 640), (37, 49)), ((20, 30), (20, 30)), ((1000, 100), (74, 7)), ((37, 37), (37, 37))],
)
def test_cache_size_shrinks_shorter_side_caps_aspect_never_upscales(size, expected) -> None:
    assert cache_size(*size, short_side=37) == expected


def test_resize_keeps_channel_axis_for_grayscale() -> None:
    image = np.full((80, 40, 1), 200, np.uint8)
    small = resize_for_cache(image, short_side=10)
    assert small.shape == (20, 10, 1) and (small == 200).all()


def test_second_read_is_served_from_cache() -> None:
    source = CountingSource(4)
    cache = DecodedImageCache(source, image_size=32)  # shorter side 37
    first, label = cache[2]
    assert first.shape == (37, 56, 3) and (first == 20).all() and label == 2
    again, label_again = cache[2]
    assert source.calls == 1
    np.testing.assert_array_equal(again, first)
    assert label_again == 2
    assert [cache.cached(i) for i in range(4)] == [False, False, True, False]


def test_forked_workers_fill_the_shared_cache() -> None:
    source = CountingSource(12)
    cache = DecodedImageCache(source, image_size=16)
    loader = DataLoader(cache, batch_size=3, num_workers=2, multiprocessing_context="fork")
    labels = torch.cat([batch[1] for batch in loader]).tolist()
    assert labels == [i % 3 for i in range(12)]
    assert source.calls == 0  # all decoding happened in the workers ...
    assert all(cache.cached(i) for i in range(12))  # ... into memory the parent sees
    image, label = cache[7]
    assert source.calls == 0 and (image == 70).all() and image.shape == (19, 28, 3) and label == 1


def test_file_cache_survives_pickling_and_is_removed(tmp_path: Path) -> None:
    source = CountingSource(3, shape=(40, 40, 1))
    cache = DecodedImageCache(source, image_size=8, directory=tmp_path / "cache")
    cache[1]
    files = sorted((tmp_path / "cache").iterdir())
    assert [f.suffix for f in files] == [".header", ".pixels"]
    clone = pickle.loads(pickle.dumps(cache))  # what a spawned worker receives
    assert clone.source.calls == 1
    image, label = clone[1]
    assert clone.source.calls == 1  # read back from the file, not decoded again
    assert image.shape == (10, 10, 1) and (image == 10).all() and label == 1
    del cache, clone
    gc.collect()
    assert list((tmp_path / "cache").iterdir()) == []


def test_mismatched_channels_and_bad_size_fail_clearly() -> None:
    with pytest.raises(ValueError, match=r"data.image_size=0 must be a positive"):
        DecodedImageCache(CountingSource(1), image_size=0)
    source = CountingSource(1, shape=(64, 64, 3))
    source.in_chans = 1
    with pytest.raises(ValueError, match=r"does not fit a cache slot"):
        DecodedImageCache(source, image_size=32)[0]
