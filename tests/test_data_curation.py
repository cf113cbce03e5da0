"""`data.exclude` / `data.relabel` change the run as stated and are recorded; the folder is never
touched. The leak warning comes from the check's own decode pass (one open per file)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from conftest import write_class_folder
from transferkit.cli import app as cli
from transferkit.data import fingerprints
from transferkit.data.datamodule import ClassificationDataModule
from transferkit.data.folders import scan_image_folder
from transferkit.errors import ConfigError


def folder_state(root: Path) -> dict[str, str]:
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def write_csv(path: Path, header: str, *rows: str) -> Path:
    path.write_text("\n".join([header, *rows]) + "\n")
    return path


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    return write_class_folder(tmp_path / "images", classes=("cat", "dog"), per_class=6, splits=("train", "val"))


def membership(scan) -> dict[str, tuple[str, int]]:
    return {path.relative_to(scan.root).as_posix(): (split, label)
            for split, items in scan.splits.items() for path, label in items}


def test_exclude_leaves_files_out_and_relabel_changes_labels_the_rest_keeps_its_split(folder, tmp_path):
    before_state, before = folder_state(folder), membership(scan_image_folder(folder, val_fraction=0.2, test_fraction=0.2))
    exclude = write_csv(tmp_path / "exclude.csv", "path,split,score", "train/cat/0.png,train,0.9",
                        str(folder / "val/dog/1.png") + ",val,0.8")  # an absolute path works too
    relabel = write_csv(tmp_path / "relabel.csv", "path,label", "train/dog/2.png,cat")
    scan = scan_image_folder(folder, val_fraction=0.2, test_fraction=0.2, exclude=str(exclude), relabel=str(relabel))
    after = membership(scan)
    assert set(before) - set(after) == {"train/cat/0.png", "val/dog/1.png"}
    assert after["train/dog/2.png"] == (before["train/dog/2.png"][0], 0)
    assert {p: v for p, v in after.items() if p != "train/dog/2.png"} == \
        {p: v for p, v in before.items() if p in after and p != "train/dog/2.png"}
    record = scan.to_json()
    assert record["exclude"] == {"file": str(exclude), "paths": ["train/cat/0.png", "val/dog/1.png"]}
    assert record["relabel"] == {"file": str(relabel), "changes": [["train/dog/2.png", "dog", "cat"]]}
    assert folder_state(folder) == before_state


def test_excluded_files_are_not_even_decoded(folder, tmp_path):
    (folder / "train" / "cat" / "broken.png").write_bytes(b"not an image")
    exclude = write_csv(tmp_path / "exclude.csv", "path", "train/cat/broken.png")
    scan = scan_image_folder(folder, exclude=str(exclude))
    assert scan.skipped == () and "train/cat/broken.png" not in membership(scan)


@pytest.mark.parametrize("header, row, match", [
    ("path", "train/cat/nope.png", r"data.exclude=.*1 path\(s\) are no image of data.root.*nope\.png"),
    ("file", "train/cat/0.png", "data.exclude=.*has no 'path' column"),
])
def test_bad_exclude_files_name_the_key(folder, tmp_path, header, row, match):
    with pytest.raises(ConfigError, match=match):
        scan_image_folder(folder, exclude=str(write_csv(tmp_path / "x.csv", header, row)))


def test_bad_relabel_files_name_the_key(folder, tmp_path):
    with pytest.raises(ConfigError, match=r"data.relabel=.*label 'cow'.*use one of \['cat', 'dog'\]"):
        scan_image_folder(folder, relabel=str(write_csv(tmp_path / "r.csv", "path,label", "train/cat/0.png,cow")))
    with pytest.raises(ConfigError, match="data.relabel=.*is not a file"):
        scan_image_folder(folder, relabel=str(tmp_path / "missing.csv"))
    with pytest.raises(ValueError, match="data.exclude=.*embedded data has no files"):
        ClassificationDataModule(root=None, exclude="x.csv")


def test_fit_records_exclude_and_relabel_in_splits_and_results(folder, tmp_path, fast):
    exclude = write_csv(tmp_path / "exclude.csv", "path", "train/cat/0.png", "train/cat/1.png")
    relabel = write_csv(tmp_path / "relabel.csv", "path,label", "train/dog/2.png,cat")
    before = folder_state(folder)
    results = cli.run(["fit", *fast, f"data.root={folder}", f"data.exclude={exclude}", f"data.relabel={relabel}",
                       "data.val_fraction=0", "data.test_fraction=0"])
    run_dir = Path(results["run_dir"])
    splits = json.loads((run_dir / "splits.json").read_text())
    assert splits["exclude"]["paths"] == ["train/cat/0.png", "train/cat/1.png"]
    assert ["train/dog/2.png", 0] in splits["splits"]["train"]
    assert results["data"]["exclude"] == {"file": str(exclude), "images": 2}
    assert results["data"]["relabel"] == {"file": str(relabel), "images": 1}
    assert results["data"]["train_size"] == 10
    assert folder_state(folder) == before


def test_the_leak_warning_reads_each_file_once(folder, monkeypatch, caplog):
    """The pixel digests come from the check's own decode: one open per file, no second read of any file."""
    copy = folder / "val" / "cat" / "copy.png"
    copy.write_bytes((folder / "train" / "cat" / "3.png").read_bytes())
    opened: list[Path] = []
    real_open = fingerprints.open_image
    monkeypatch.setattr(fingerprints, "open_image", lambda path, **kw: opened.append(path) or real_open(path, **kw))
    monkeypatch.setattr(Path, "read_bytes", lambda self: pytest.fail(f"second read of {self}"))
    datamodule = ClassificationDataModule(root=str(folder), num_workers=0)
    with caplog.at_level("WARNING"):
        datamodule.scan()
    assert sorted(opened) == sorted(set(opened)) and len(opened) == 25
    warning = next(r.getMessage() for r in caplog.records if "more than one split" in r.getMessage())
    pair = {f"{folder / 'train/cat/3.png'} == {copy}", f"{copy} == {folder / 'train/cat/3.png'}"}  # test carved from train
    assert any(text in warning for text in pair) and "transferkit audit" in warning
