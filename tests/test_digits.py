"""The embedded target data: scikit-learn's 8x8 digits and their fixed split."""

from __future__ import annotations

import numpy as np
import pytest

from transferkit.data.embedded.digits import (
    DIGIT_CLASS_NAMES,
    load_digits_images,
    load_digits_splits,
    subsample_per_class,
    upsample,
)


def test_images_are_bright_ink_uint8() -> None:
    images, labels = load_digits_images()
    assert images.shape == (1797, 8, 8, 1) and images.dtype == np.uint8
    assert images.max() == 255 and images.min() == 0
    # Ink is bright on a dark background: the outer columns are nearly empty.
    assert images[:, :, [0, 7], 0].mean() < 15 < 80 < images[:, 2:6, 2:6, 0].mean()
    assert sorted(np.unique(labels)) == list(range(10))
    assert DIGIT_CLASS_NAMES == ["0", "1", "2", "3", "4", "5", "6", "7", "8", "9"]


def test_split_is_fixed_stratified_and_disjoint() -> None:
    splits = load_digits_splits()
    again = load_digits_splits()
    sizes = {name: len(labels) for name, (_, labels) in splits.items()}
    assert sizes == {"train": 1077, "val": 360, "test": 360}
    for name in splits:
        np.testing.assert_array_equal(splits[name][0], again[name][0])
        np.testing.assert_array_equal(splits[name][1], again[name][1])
    for _, labels in splits.values():
        shares = np.bincount(labels, minlength=10) / len(labels)
        assert np.abs(shares - 0.1).max() < 0.01  # stratified: ~10% of each class everywhere
    flat = {name: {img.tobytes() + bytes([lab]) for img, lab in zip(*part)} for name, part in splits.items()}
    assert not flat["train"] & flat["test"] and not flat["val"] & flat["test"]


def test_other_seed_gives_other_split() -> None:
    a, b = load_digits_splits(seed=0), load_digits_splits(seed=1)
    assert not np.array_equal(a["test"][0], b["test"][0])


@pytest.mark.parametrize(("key", "val", "test"), [("val_fraction", 0.0, 0.2), ("test_fraction", 0.2, 1.0), ("leave no", 0.5, 0.5)])
def test_bad_fractions_name_the_argument(key: str, val: float, test: float) -> None:
    with pytest.raises(ValueError, match=key):
        load_digits_splits(val_fraction=val, test_fraction=test)


def test_subsample_per_class_keeps_k_of_each() -> None:
    images, labels = load_digits_splits()["train"]
    few_images, few_labels = subsample_per_class(images, labels, per_class=10, seed=3)
    assert few_images.shape == (100, 8, 8, 1)
    assert np.bincount(few_labels).tolist() == [10] * 10
    np.testing.assert_array_equal(few_labels, subsample_per_class(images, labels, 10, seed=3)[1])
    with pytest.raises(ValueError, match="per_class=1000"):
        subsample_per_class(images, labels, per_class=1000)


def test_upsample_keeps_dtype_and_range() -> None:
    images, _ = load_digits_images()
    big = upsample(images[:4], 32)
    assert big.shape == (4, 32, 32, 1) and big.dtype == np.uint8
    assert big.max() > 200 and abs(big.mean() - images[:4].mean()) < 8
