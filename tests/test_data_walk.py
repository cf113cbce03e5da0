"""Symlinks in image folders: a link back into scanned folders never relabels images; dead links are named."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from transferkit.data.discover import discover_images
from transferkit.data.folders import scan_image_folder
from transferkit.data.walk import Findings, walk_images


def write_images(folder: Path, count: int, start: int = 0) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        value = start + i
        Image.fromarray(np.full((8, 8, 3), (value, 3 * value % 256, 7), np.uint8)).save(folder / f"{i}.png")


@pytest.fixture
def cats_and_dogs(tmp_path: Path) -> Path:
    root = tmp_path / "data"
    write_images(root / "cat", 8)
    write_images(root / "dog", 8, start=100)
    return root


def labels_by_folder(listing) -> dict[str, set[str]]:
    found: dict[str, set[str]] = {}
    for path, label in listing.splits["train"]:
        found.setdefault(listing.classes[label], set()).add(path.resolve().parent.name)
    return found


def test_link_to_an_ancestor_does_not_pull_other_classes_in(cats_and_dogs: Path) -> None:
    os.symlink("..", cats_and_dogs / "cat" / "loop")
    listing = discover_images(cats_and_dogs)
    assert len(listing.splits["train"]) == 16  # not 24: dog images must not become cats
    assert labels_by_folder(listing) == {"cat": {"cat"}, "dog": {"dog"}}
    assert listing.ignored == {"symlink to a folder already scanned": 1}
    assert len(listing.notes) == 1 and "'cat/loop'" in listing.notes[0]


def test_links_into_other_scanned_folders_are_skipped(tmp_path: Path) -> None:
    root = tmp_path / "data"
    for split in ("train", "val"):
        write_images(root / split / "cat", 3)
        write_images(root / split / "dog", 3, start=50)
    os.symlink("../dog", root / "train" / "cat" / "more")  # dog images as cats
    os.symlink("../../train/cat", root / "val" / "dog" / "leak")  # train images in val
    os.symlink("cat", root / "train" / "kitty")  # a second class of the same images
    listing = discover_images(root)
    assert listing.classes == ("cat", "dog")
    assert [len(items) for items in listing.splits.values()] == [6, 6]
    note = listing.notes[0]
    for link in ("train/cat/more", "val/dog/leak", "train/kitty"):
        assert repr(link) in note


def test_outside_links_are_still_followed(tmp_path: Path) -> None:
    root, pool = tmp_path / "data", tmp_path / "pool"
    write_images(pool / "extra", 2, start=200)
    write_images(root / "cat", 2)
    write_images(root / "dog", 2, start=100)
    os.symlink(pool / "extra", root / "cat" / "extra")
    listing = discover_images(root)
    assert len(listing.splits["train"]) == 6 and listing.notes == ()
    write_images(pool / "other", 2, start=300)
    os.symlink("..", pool / "extra" / "up")  # outside the data, up to the pool: not followed either
    listing = discover_images(root)
    assert len(listing.splits["train"]) == 6 and listing.ignored == {"symlink to a folder already scanned": 1}
    assert "'cat/extra/up'" in listing.notes[0]


def test_broken_links_are_named_and_counted(cats_and_dogs: Path, tmp_path: Path) -> None:
    os.symlink(tmp_path / "gone.png", cats_and_dogs / "cat" / "dead.png")
    os.symlink(tmp_path / "gone_folder", cats_and_dogs / "dog" / "dead_folder")
    listing = discover_images(cats_and_dogs)
    assert listing.ignored == {"broken symlink": 2}
    assert "'cat/dead.png'" in listing.notes[0] and "'dog/dead_folder'" in listing.notes[0]


def test_folder_check_warns_with_the_links(cats_and_dogs: Path, tmp_path: Path,
                                           caplog: pytest.LogCaptureFixture) -> None:
    from transferkit.data.datamodule import ClassificationDataModule

    os.symlink("..", cats_and_dogs / "cat" / "loop")
    os.symlink(tmp_path / "gone.png", cats_and_dogs / "dog" / "dead.png")
    scan = scan_image_folder(cats_and_dogs, val_fraction=0.25)
    assert sum(map(sum, scan.counts.values())) == 16
    assert any("'cat/loop'" in w for w in scan.warnings)
    assert any("broken symlink" in w and "'dog/dead.png'" in w for w in scan.warnings)
    assert scan.to_json()["warnings"] == list(scan.warnings)
    with caplog.at_level(logging.WARNING):
        ClassificationDataModule(str(cats_and_dogs), image_size=8, batch_size=2, num_workers=0).scan()
    assert "'cat/loop'" in caplog.text and "'dog/dead.png'" in caplog.text


def test_walk_defaults_to_skipping_links_back_into_the_folder(cats_and_dogs: Path) -> None:
    os.symlink("..", cats_and_dogs / "cat" / "up")
    findings = Findings()
    images, nested = walk_images(cats_and_dogs / "cat", findings)
    assert len(images) == 8 and nested == 0
    assert findings.links == {"symlink to a folder already scanned": [cats_and_dogs / "cat" / "up"]}


def test_a_loop_of_links_outside_the_data_is_walked_once(tmp_path: Path) -> None:
    root, pool = tmp_path / "data", tmp_path / "pool"
    write_images(pool / "a", 2, start=200)
    write_images(pool / "b", 2, start=220)
    os.symlink(pool / "b", pool / "a" / "to_b")
    os.symlink(pool / "a", pool / "b" / "to_a")
    write_images(root / "cat", 2)
    write_images(root / "dog", 2, start=100)
    os.symlink(pool / "a", root / "cat" / "pool")
    listing = discover_images(root)
    assert len(listing.splits["train"]) == 8 and listing.ignored == {"symlink loop": 1}
    assert "'cat/pool/to_b/to_a'" in listing.notes[0]
