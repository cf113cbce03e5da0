"""Seeded stratified splits, k-fold and splits.json."""

from __future__ import annotations

import json
import logging
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from transferkit.data.splits import draw_per_class, load_splits, make_splits, save_splits
from transferkit.errors import ConfigError

CLASSES = ("a", "b", "c")


def items(counts: dict[int, int], root: Path = Path("/data")) -> list[tuple[Path, int]]:
    return [(root / CLASSES[label] / f"{i}.png", label) for label, n in counts.items() for i in range(n)]


def label_counts(split: list[tuple[Path, int]]) -> dict[int, int]:
    return dict(sorted(Counter(label for _, label in split).items()))


def test_val_is_carved_stratified_and_disjoint() -> None:
    train = items({0: 20, 1: 10})
    splits = make_splits({"train": train}, CLASSES, val_fraction=0.2, seed=3)
    assert list(splits) == ["train", "val"]
    assert label_counts(splits["val"]) == {0: 4, 1: 2}
    assert label_counts(splits["train"]) == {0: 16, 1: 8}
    assert sorted(splits["train"] + splits["val"]) == sorted(train)


def test_split_is_reproducible_and_seed_dependent() -> None:
    train = items({0: 30, 1: 30})
    first = make_splits({"train": train}, CLASSES, val_fraction=0.2, seed=0)
    again = make_splits({"train": train}, CLASSES, val_fraction=0.2, seed=0)
    other = make_splits({"train": train}, CLASSES, val_fraction=0.2, seed=1)
    assert first == again
    assert first["val"] != other["val"]


def test_test_and_val_fractions_with_imbalance() -> None:
    train = items({0: 200, 1: 2, 2: 10})
    splits = make_splits({"train": train}, CLASSES, val_fraction=0.1, test_fraction=0.1, seed=0)
    assert label_counts(splits["test"]) == {0: 20, 1: 1, 2: 1}
    # class b has a single image left after test: it stays in train, val gets none of it
    assert label_counts(splits["val"]) == {0: 18, 2: 1}
    assert label_counts(splits["train"]) == {0: 162, 1: 1, 2: 8}


def test_one_image_class_warns_and_stays_in_train(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="transferkit.data.splits"):
        splits = make_splits({"train": items({0: 5, 1: 1})}, CLASSES, val_fraction=0.2)
    assert label_counts(splits["train"]) == {0: 4, 1: 1}
    assert label_counts(splits["val"]) == {0: 1}
    assert "Class 'b' has 1 image(s): too few to split off data.val_fraction=0.2" in caplog.text


def test_existing_val_folder_is_kept() -> None:
    given = {"train": items({0: 4, 1: 4}), "val": items({0: 1, 1: 1}, Path("/v"))}
    splits = make_splits(given, CLASSES, val_fraction=0.5)
    assert splits == given


def test_kfold_partitions_all_images_stratified() -> None:
    train, val = items({0: 10, 1: 5}), items({0: 2, 1: 3}, Path("/v"))
    seen: list[tuple[Path, int]] = []
    for fold in range(4):
        splits = make_splits({"train": train, "val": val}, CLASSES, num_folds=4, fold=fold, seed=0)
        assert label_counts(splits["val"]) == {0: 3, 1: 2}
        assert len(splits["train"]) == 15
        seen += splits["val"]
    assert sorted(seen) == sorted(train + val)


def test_kfold_errors_name_keys() -> None:
    with pytest.raises(ValueError, match=r"Class 'b' has 2 image\(s\), fewer than data.num_folds=3"):
        make_splits({"train": items({0: 9, 1: 2})}, CLASSES, num_folds=3)
    with pytest.raises(ValueError, match=r"data.fold=3 is out of range; use 0..2"):
        make_splits({"train": items({0: 9, 1: 9})}, CLASSES, num_folds=3, fold=3)


@pytest.mark.parametrize(("key", "kwargs"), [("data.val_fraction=1.0", {"val_fraction": 1.0}),
                                             ("data.test_fraction=-0.1", {"test_fraction": -0.1})])
def test_bad_fractions(key: str, kwargs: dict) -> None:
    with pytest.raises(ValueError, match=key):
        make_splits({"train": items({0: 4})}, CLASSES, **kwargs)


def test_save_and_load_round_trip(tmp_path: Path) -> None:
    root = tmp_path / "data"
    splits = {"train": items({0: 2}, root), "val": [(root / "ü" / "1.png", 1)]}
    path = save_splits(tmp_path / "run" / "splits.json", root, ("a", "ü"), splits)
    payload = json.loads(path.read_text(encoding="utf-8"))
    assert payload["splits"]["val"] == [["ü/1.png", 1]]
    assert load_splits(path) == (("a", "ü"), splits)
    moved = tmp_path / "moved"
    classes, loaded = load_splits(path, root=moved)
    assert loaded["train"][0] == (moved / "a" / "0.png", 0)


def test_draw_per_class_keeps_n_of_each_class_sorted() -> None:
    labels = np.repeat([0, 1, 2], [10, 7, 12])
    chosen = draw_per_class(labels, 5, seed=0)
    assert np.bincount(labels[chosen]).tolist() == [5, 5, 5]
    assert chosen.tolist() == sorted(set(chosen.tolist()))


def test_draw_per_class_depends_only_on_its_seed() -> None:
    labels = np.tile(np.arange(4), 25)
    assert np.array_equal(draw_per_class(labels, 3, seed=7), draw_per_class(labels, 3, seed=7))
    assert not np.array_equal(draw_per_class(labels, 3, seed=7), draw_per_class(labels, 3, seed=8))


def test_draw_per_class_nests_and_keeps_small_classes_whole() -> None:
    labels = np.array([0] * 20 + [1] * 2 + [3] * 6)  # class 2 absent: nothing drawn for it
    small, large = draw_per_class(labels, 4, seed=1), draw_per_class(labels, 8, seed=1)
    assert set(small) <= set(large)
    assert np.bincount(labels[large], minlength=4).tolist() == [8, 2, 0, 6]
    assert draw_per_class(np.array([], dtype=np.int64), 3, seed=0).tolist() == []


@pytest.mark.parametrize("bad", [0, -2, 2.5, True, "10"])
def test_draw_per_class_rejects_bad_n(bad) -> None:
    with pytest.raises(ConfigError, match=f"data.train_per_class={bad!r}"):
        draw_per_class(np.zeros(4, dtype=np.int64), bad, seed=0)
