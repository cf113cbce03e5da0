"""Bad manifests are refused before any decode, naming their CSV lines."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from transferkit.data.discover import discover_images


def images(root: Path, count: int = 4) -> None:
    for i in range(count):
        (root / "imgs").mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.full((8, 8, 3), 40 * i, np.uint8)).save(root / "imgs" / f"{i}.png")


def manifest(root: Path, text: str) -> Path:
    path = root / "labels.csv"
    path.write_text("path,label,split\n" + text)
    return path


def test_val_label_unknown_to_train_names_the_row(tmp_path: Path) -> None:
    images(tmp_path)
    csv = manifest(tmp_path, "imgs/0.png,cat,train\nimgs/1.png,dog,train\nimgs/2.png,bird,val\n")
    with pytest.raises(ValueError, match=r"labels \['bird'\] appear in val/test rows but on no train row.*"
                                         r"line 4 \(imgs/2.png\)"):
        discover_images(tmp_path, manifest=csv)


def test_missing_file_names_the_row(tmp_path: Path) -> None:
    images(tmp_path)
    csv = manifest(tmp_path, "imgs/0.png,cat,train\nimgs/9.png,dog,train\n")
    with pytest.raises(FileNotFoundError, match=r"1 row\(s\) name a file that does not exist.*line 3 \(imgs/9.png\)"):
        discover_images(tmp_path, manifest=csv)


def test_duplicate_path_with_different_labels_refused(tmp_path: Path) -> None:
    images(tmp_path)
    csv = manifest(tmp_path, "imgs/0.png,cat,train\nimgs/1.png,dog,train\nimgs/0.png,dog,train\n")
    with pytest.raises(ValueError, match=r"listed twice.*line 2 \(imgs/0.png\) says cat in train, line 4 says dog"):
        discover_images(tmp_path, manifest=csv)


def test_exact_repeat_counted_once_and_empty_label_refused(tmp_path: Path) -> None:
    images(tmp_path)
    csv = manifest(tmp_path, "imgs/0.png,cat,train\nimgs/1.png,dog,train\nimgs/0.png,cat,train\n")
    assert discover_images(tmp_path, manifest=csv).splits["train"] == [
        (tmp_path / "imgs/0.png", 0), (tmp_path / "imgs/1.png", 1)]
    csv = manifest(tmp_path, "imgs/0.png,cat,train\nimgs/1.png,,train\n")
    with pytest.raises(ValueError, match=r"empty label: line 3 \(imgs/1.png\)"):
        discover_images(tmp_path, manifest=csv)
