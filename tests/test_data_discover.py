"""Discovering images in awkward folders: layouts, junk, symlink loops, nesting, Unicode names, manifests."""

from __future__ import annotations

import logging
import os
import unicodedata
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from transferkit.data.discover import discover_images


def write_image(path: Path, value: int = 0, size: int = 8) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((size, size, 3), value, np.uint8)).save(path)
    return path


def tree_snapshot(root: Path) -> list[tuple[str, float]]:
    return sorted((str(p), p.lstat().st_mtime) for p in root.rglob("*"))


def test_flat_layout_labels_follow_sorted_class_names(tmp_path: Path) -> None:
    for name, count in (("dog", 2), ("cat", 3)):
        for i in range(count):
            write_image(tmp_path / name / f"{i}.png")
    scan = discover_images(tmp_path)
    assert scan.layout == "classes"
    assert scan.classes == ("cat", "dog")
    assert list(scan.splits) == ["train"]
    labels = [label for _, label in scan.splits["train"]]
    assert labels == [0, 0, 0, 1, 1]


def test_split_layout_accepts_validation_alias(tmp_path: Path) -> None:
    for split in ("train", "validation", "test"):
        for name in ("a", "b"):
            write_image(tmp_path / split / name / "x.png")
    scan = discover_images(tmp_path)
    assert scan.layout == "splits"
    assert list(scan.splits) == ["train", "val", "test"]
    assert [len(items) for items in scan.splits.values()] == [2, 2, 2]


def test_all_extensions_case_insensitive_and_gif(tmp_path: Path) -> None:
    for i, suffix in enumerate(("jpg", "JPEG", "png", "webp", "bmp", "tif", "TIFF", "gif")):
        path = tmp_path / "a" / f"{i}.{suffix}"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (4, 4)).save(path, format={"jpg": "JPEG", "tif": "TIFF"}.get(suffix.lower()))
    write_image(tmp_path / "b" / "0.png")
    (tmp_path / "a" / "notes.txt").write_text("hi")
    scan = discover_images(tmp_path)
    assert len([p for p, label in scan.splits["train"] if label == 0]) == 8
    assert scan.ignored == {"not an image (.txt)": 1}


def test_hidden_and_junk_are_not_classes_or_images(tmp_path: Path) -> None:
    write_image(tmp_path / "cat" / "0.png")
    write_image(tmp_path / "dog" / "0.png")
    write_image(tmp_path / "cat" / "._0.png")
    write_image(tmp_path / "__MACOSX" / "cat" / "._0.png")
    write_image(tmp_path / ".ipynb_checkpoints" / "0.png")
    write_image(tmp_path / "dog" / ".ipynb_checkpoints" / "0-checkpoint.png")
    (tmp_path / "cat" / ".DS_Store").write_bytes(b"\0")
    (tmp_path / "dog" / "Thumbs.db").write_bytes(b"\0")
    scan = discover_images(tmp_path)
    assert scan.classes == ("cat", "dog")
    assert sorted(p.name for p, _ in scan.splits["train"]) == ["0.png", "0.png"]
    assert scan.ignored == {"hidden or junk file": 3}


def test_symlink_loop_is_followed_once(tmp_path: Path) -> None:
    for name in ("a", "b"):
        for i in range(8):
            write_image(tmp_path / name / f"{i}.png")
    os.symlink(tmp_path / "a", tmp_path / "a" / "loop")
    os.symlink(tmp_path / "b", tmp_path / "b" / "sub_loop_parent", target_is_directory=True)
    scan = discover_images(tmp_path)
    assert len(scan.splits["train"]) == 16


def test_symlinked_class_folder_and_broken_link(tmp_path: Path) -> None:
    data, elsewhere = tmp_path / "data", tmp_path / "elsewhere"
    write_image(elsewhere / "x" / "0.png")
    write_image(data / "y" / "0.png")
    os.symlink(elsewhere / "x", data / "x")
    os.symlink(tmp_path / "gone.png", data / "y" / "dead.png")
    scan = discover_images(data)
    assert scan.classes == ("x", "y")
    assert len(scan.splits["train"]) == 2
    assert scan.ignored == {"broken symlink": 1}


def test_nested_files_belong_to_top_level_class(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    write_image(tmp_path / "cat" / "0.png")
    write_image(tmp_path / "cat" / "indoor" / "1.png")
    write_image(tmp_path / "cat" / "indoor" / "deep" / "2.png")
    write_image(tmp_path / "dog" / "0.png")
    with caplog.at_level(logging.INFO, logger="transferkit.data.discover"):
        scan = discover_images(tmp_path)
    assert scan.classes == ("cat", "dog")
    assert [label for _, label in scan.splits["train"]] == [0, 0, 0, 1]
    assert "2 images in nested sub-folders" in caplog.text and "'cat'" in caplog.text


def test_unicode_names_are_nfc_and_case_sensitive(tmp_path: Path) -> None:
    decomposed = unicodedata.normalize("NFD", "café")
    write_image(tmp_path / "train" / decomposed / "0.png")
    write_image(tmp_path / "train" / "Cat" / "0.png")
    write_image(tmp_path / "train" / "cat" / "0.png")
    write_image(tmp_path / "val" / "café" / "0.png")
    scan = discover_images(tmp_path)
    assert scan.classes == ("Cat", "café", "cat")
    assert scan.splits["val"][0][1] == 1


def test_colliding_class_names_are_named_in_a_warning(tmp_path: Path) -> None:
    from transferkit.data.folders import scan_image_folder

    composed, decomposed = "café", unicodedata.normalize("NFD", "café")
    for name in (composed, decomposed, "Cat", "cat", "dog"):
        write_image(tmp_path / name / "0.png", value=len(name))
    if len({p.name for p in tmp_path.iterdir()}) < 5:
        pytest.skip("this file system folds Unicode or case in names itself")
    scan = discover_images(tmp_path)
    assert scan.classes == ("Cat", "café", "cat", "dog")
    assert len([label for _, label in scan.splits["train"] if label == 1]) == 2  # merged, as before
    nfc, case = scan.notes
    assert "'caf\\xe9'" in nfc and "'cafe\\u0301'" in nfc and "NFC" in nfc and "merged" in nfc
    assert "'Cat', 'cat'" in case and "letter case" in case
    assert set(scan.notes) <= set(scan_image_folder(tmp_path, val_fraction=0.0).warnings)


def test_empty_class_folder_is_reported_not_a_class(tmp_path: Path) -> None:
    write_image(tmp_path / "a" / "0.png")
    write_image(tmp_path / "b" / "0.png")
    (tmp_path / "empty").mkdir()
    scan = discover_images(tmp_path)
    assert scan.classes == ("a", "b")
    assert scan.empty_folders == ("empty",)


def test_val_only_class_fails_naming_the_folder(tmp_path: Path) -> None:
    write_image(tmp_path / "train" / "a" / "0.png")
    write_image(tmp_path / "val" / "a" / "0.png")
    write_image(tmp_path / "val" / "zebra" / "0.png")
    with pytest.raises(ValueError, match=r"val/ has classes \['zebra'\] that train/ lacks"):
        discover_images(tmp_path)


@pytest.mark.parametrize(
    ("setup", "error", "message"),
    [
        (lambda root: root / "missing", FileNotFoundError, "does not exist. Expected"),
        (lambda root: write_image(root / "file.png"), NotADirectoryError, "is a file, not a folder"),
        (
            lambda root: write_image(root / "loose.png").parent,
            FileNotFoundError,
            "has images but no class folders",
        ),
        (lambda root: (root / "a").mkdir() or root, FileNotFoundError, "has no class folders"),
        (
            lambda root: write_image(root / "val" / "a" / "0.png").parents[2],
            FileNotFoundError,
            r"has \['val/'\] but no train/ folder",
        ),
    ],
)
def test_bad_roots_give_one_line_errors(tmp_path: Path, setup, error, message) -> None:
    root = setup(tmp_path)
    with pytest.raises(error, match=message) as info:
        discover_images(root)
    assert "data.root=" in str(info.value) and "\n" not in str(info.value)


def test_scanning_never_writes_into_root(tmp_path: Path) -> None:
    write_image(tmp_path / "train" / "a" / "0.png")
    write_image(tmp_path / "val" / "a" / "0.png")
    before = tree_snapshot(tmp_path)
    discover_images(tmp_path)
    assert tree_snapshot(tmp_path) == before


def test_manifest_with_split_column(tmp_path: Path) -> None:
    for i in range(3):
        write_image(tmp_path / "imgs" / f"{i}.png")
    manifest = tmp_path / "labels.csv"
    manifest.write_text("path,label,split\nimgs/0.png,dog,train\nimgs/1.png,cat,train\nimgs/2.png,dog,valid\n")
    scan = discover_images(tmp_path, manifest=manifest)
    assert scan.layout == "manifest"
    assert scan.classes == ("cat", "dog")
    assert scan.splits["train"] == [(tmp_path / "imgs/1.png", 0), (tmp_path / "imgs/0.png", 1)]
    assert scan.splits["val"] == [(tmp_path / "imgs/2.png", 1)]


def test_manifest_errors_name_the_key(tmp_path: Path) -> None:
    bad = tmp_path / "bad.csv"
    bad.write_text("file,class\na.png,x\n")
    with pytest.raises(ValueError, match=r"data.manifest=.*lacks columns \['label', 'path'\]"):
        discover_images(tmp_path, manifest=bad)
    with pytest.raises(FileNotFoundError, match="data.manifest="):
        discover_images(tmp_path, manifest=tmp_path / "none.csv")
