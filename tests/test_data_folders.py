"""scan_image_folder end to end: layouts to final splits, k-fold, and the splits.json record."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from transferkit.data.folders import scan_image_folder
from transferkit.data.splits import load_splits


def make_folder(root: Path, layout: dict[str, dict[str, int]]) -> None:
    """``layout``: relative folder -> {class: image count}; each image has unique pixels."""
    value = 0
    for prefix, counts in layout.items():
        for name, n in counts.items():
            folder = root / prefix / name
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                value += 1
                pixels = np.full((8, 8, 3), (value % 256, value // 256, 7), np.uint8)
                Image.fromarray(pixels).save(folder / f"{i}.png")


def test_flat_folder_gets_seeded_val_and_test(tmp_path: Path) -> None:
    make_folder(tmp_path, {"": {"a": 20, "b": 10}})
    scan = scan_image_folder(tmp_path, val_fraction=0.2, test_fraction=0.1, seed=5)
    assert scan.layout == "classes" and scan.class_names == ("a", "b")
    assert scan.counts == {"train": [14, 7], "val": [4, 2], "test": [2, 1]}
    assert scan.skipped == () and scan.warnings == ()
    again = scan_image_folder(tmp_path, val_fraction=0.2, test_fraction=0.1, seed=5)
    assert again.splits == scan.splits


def test_split_folders_are_kept_and_test_carved_only_when_missing(tmp_path: Path) -> None:
    make_folder(tmp_path, {"train": {"a": 10, "b": 10}, "valid": {"a": 2, "b": 3}})
    scan = scan_image_folder(tmp_path, val_fraction=0.5, test_fraction=0.2)
    assert scan.layout == "splits"
    assert scan.counts == {"train": [8, 8], "val": [2, 3], "test": [2, 2]}
    assert all(path.parts[-3] == "valid" for path, _ in scan.splits["val"])


def test_kfold_through_scan(tmp_path: Path) -> None:
    make_folder(tmp_path, {"": {"a": 10, "b": 5}})
    folds = [scan_image_folder(tmp_path, num_folds=5, fold=k) for k in range(5)]
    assert all(scan.counts["val"] == [2, 1] for scan in folds)
    assert len({path for scan in folds for path, _ in scan.splits["val"]}) == 15
    with pytest.raises(ValueError, match=r"data.fold=1 needs data.num_folds"):
        scan_image_folder(tmp_path, fold=1)


def test_to_json_is_a_splits_file_that_reproduces_the_run(tmp_path: Path) -> None:
    data = tmp_path / "data"
    make_folder(data, {"": {"cat": 6, "dög": 4}})
    (data / "cat" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    scan = scan_image_folder(data, val_fraction=0.25, max_bad_fraction=0.1)
    record = scan.to_json()
    assert record["counts"] == {"train": {"cat": 4, "dög": 3}, "val": {"cat": 2, "dög": 1}}
    assert record["skipped"] == [{"path": str(data / "cat" / "broken.png"),
                                  "reason": "not an image Pillow can identify"}]
    assert all(not Path(rel).is_absolute() for rel, _ in record["splits"]["train"])
    saved = tmp_path / "run" / "splits.json"
    saved.parent.mkdir()
    saved.write_text(json.dumps(record, ensure_ascii=False), encoding="utf-8")
    assert load_splits(saved) == (scan.class_names, scan.splits)
    assert "class   train" in scan.summary_table().splitlines()[0]
