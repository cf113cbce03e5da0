"""scan_image_folder validates up front: bad files skipped or fatal, class checks, duplicates, summary table."""

from __future__ import annotations

import logging
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from transferkit.data.fingerprints import cross_split_duplicates, inspect_files
from transferkit.data.folders import scan_image_folder
from transferkit.data.validate import (
    BadFile,
    check_classes,
    drop_unreadable,
    find_unreadable,
    summary_table,
)


def write_image(path: Path, seed: int, fmt: str = "PNG") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(seed).integers(0, 256, (16, 16, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path, format=fmt)
    return path


def make_folder(root: Path, counts: dict[str, int], corrupt: int = 0) -> list[Path]:
    """Write ``counts`` images per class; the first ``corrupt`` files become garbage or truncated."""
    paths = [
        write_image(root / name / f"{i}.jpg", seed=zlib.crc32(f"{root}/{name}/{i}".encode()), fmt="JPEG")
        for name, n in counts.items()
        for i in range(n)
    ]
    for k, path in enumerate(paths[:corrupt]):
        data = path.read_bytes()
        path.write_bytes(data[: len(data) // 2] if k % 2 else b"garbage")
    return paths[:corrupt]


def test_three_percent_corrupt_is_skipped_and_reported(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    broken = make_folder(tmp_path, {"a": 50, "b": 50}, corrupt=3)
    with caplog.at_level(logging.WARNING):
        scan = scan_image_folder(tmp_path, val_fraction=0.2, seed=0)
    assert [bad.path for bad in scan.skipped] == broken
    assert scan.skipped[0].reason == "not an image Pillow can identify"
    assert "truncated" in scan.skipped[1].reason.lower()
    used = {path for items in scan.splits.values() for path, _ in items}
    assert used.isdisjoint(broken) and len(used) == 97
    assert scan.counts == {"train": [38, 40], "val": [9, 10]}
    assert "Skipping 3 of 100 images (3.0%) that cannot be read" in caplog.text
    assert str(broken[2]) in caplog.text
    record = scan.to_json()
    assert record["counts"]["val"] == {"a": 9, "b": 10}
    assert record["skipped"][0] == {"path": str(broken[0]), "reason": "not an image Pillow can identify"}
    assert len(record["splits"]["train"]) == 78
    path, reason = scan.skipped[2]
    assert path == broken[2] and reason == "not an image Pillow can identify"


def test_half_corrupt_stops_with_the_full_list(tmp_path: Path) -> None:
    broken = make_folder(tmp_path, {"a": 4, "b": 4}, corrupt=4)
    with pytest.raises(ValueError, match=r"4 of 8 images \(50.0%\) cannot be read.*data.max_bad_fraction=0.05") as info:
        scan_image_folder(tmp_path)
    for path in broken:
        assert f"  {path}: " in str(info.value)


def test_threshold_is_configurable(tmp_path: Path) -> None:
    make_folder(tmp_path, {"a": 6, "b": 4}, corrupt=4)
    with pytest.raises(ValueError, match="40.0%"):
        scan_image_folder(tmp_path, max_bad_fraction=0.3)
    scan = scan_image_folder(tmp_path, max_bad_fraction=0.4, val_fraction=0.0)
    assert scan.counts == {"train": [2, 4]}
    assert len(scan.skipped) == 4
    with pytest.raises(ValueError, match=r"data.max_bad_fraction=1.5 is out of range"):
        drop_unreadable({"train": []}, [BadFile(Path("x"), "y")], 1.5)


def test_parallel_check_matches_serial(tmp_path: Path) -> None:
    broken = make_folder(tmp_path, {"a": 10}, corrupt=5)
    paths = sorted(tmp_path.rglob("*.jpg"))
    serial = find_unreadable(paths)
    assert {b.path for b in serial} == set(broken)
    assert find_unreadable(paths, num_workers=2) == serial


def test_summary_table_text() -> None:
    table = summary_table(("cat", "hedgehog"), {"train": [40, 3], "val": [10, 1]})
    assert table.splitlines() == [
        "class      train     val",
        "------------------------",
        "cat           40      10",
        "hedgehog       3       1",
        "total         43      11",
    ]


def test_single_class_is_an_error(tmp_path: Path) -> None:
    make_folder(tmp_path, {"only": 3})
    with pytest.raises(ValueError, match=r"Only one class with images was found \(\['only'\]\); classification needs at least 2"):
        scan_image_folder(tmp_path)


def test_imbalance_empty_folder_and_missing_val_class_warnings(tmp_path: Path) -> None:
    make_folder(tmp_path / "train", {"common": 100, "rare": 1})
    make_folder(tmp_path / "val", {"common": 2})
    (tmp_path / "train" / "nothing").mkdir()
    scan = scan_image_folder(tmp_path)
    assert scan.class_names == ("common", "rare")
    assert scan.warnings == (
        "Class folder 'train/nothing' has no images and is ignored; add images or remove it.",
        "val has no images of classes ['rare']; their val metrics are undefined. "
        "Add images to val/<class> or let a fraction be split off.",
        "Classes are imbalanced 100:1 (largest:smallest in train); consider "
        "data.balance=weights or data.balance=sampler.",
    )


def test_balanced_classes_give_no_warnings() -> None:
    assert check_classes(("a", "b"), {"train": [5, 6], "val": [1, 1]}) == []


def test_cross_split_duplicates_are_found(tmp_path: Path) -> None:
    a = write_image(tmp_path / "train" / "x" / "1.png", seed=1)
    b = write_image(tmp_path / "val" / "x" / "copy.png", seed=1)
    write_image(tmp_path / "train" / "x" / "same_split_copy.png", seed=1)
    write_image(tmp_path / "train" / "y" / "2.png", seed=2)
    write_image(tmp_path / "val" / "y" / "3.png", seed=3)
    splits = {
        "train": [(a, 0), (tmp_path / "train/x/same_split_copy.png", 0), (tmp_path / "train/y/2.png", 1)],
        "val": [(b, 0), (tmp_path / "val/y/3.png", 1)],
    }
    _, prints = inspect_files([path for items in splits.values() for path, _ in items])
    assert cross_split_duplicates(splits, prints) == [(a, b)]
    (warning,) = scan_image_folder(tmp_path).warnings
    assert warning.startswith("1 file(s) appear in more than one split")
    assert f"{a} == {b}" in warning and "transferkit audit" in warning


def test_same_pixels_in_another_format_is_a_leak(tmp_path: Path) -> None:
    """The digest is of the decoded pixels: a BMP copy of a PNG leaks as much as a byte copy."""
    a = write_image(tmp_path / "train" / "x" / "1.png", seed=1)
    b = write_image(tmp_path / "val" / "x" / "1.bmp", seed=1, fmt="BMP")
    for split, name, seed in (("train", "y", 2), ("val", "y", 3)):
        write_image(tmp_path / split / name / f"{seed}.png", seed=seed)
    (warning,) = scan_image_folder(tmp_path).warnings
    assert f"{a} == {b}" in warning
