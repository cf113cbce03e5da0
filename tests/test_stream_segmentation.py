"""`data.root=s3://bucket/prefix` for segmentation: image/mask folders in an object store (a real moto server on
localhost), paired, split and read as the same folder on local disk is."""

from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image

from tests.conftest import write_segmentation_folder
from tests.s3_store import delete_object, fit_local_and_remote, s3_endpoint, s3_env, upload_folder  # noqa: F401
from transferkit.data.segmentation_scan import scan_segmentation_folder
from transferkit.data.streaming.remote_segmentation import scan_remote_segmentation
from transferkit.data.streaming.store import ObjectStore

pytest.importorskip("s3fs")


def relative(splits: dict, root: str) -> dict:
    base = root.split("://", 1)[-1].rstrip("/") + "/"
    return {split: [[str(p).removeprefix(base) for p in pair] for pair in pairs] for split, pairs in splits.items()}


def with_extras(folder: Path) -> Path:
    (folder / "masks" / "orphan.png").write_bytes((folder / "masks" / "0.png").read_bytes())  # no image: ignored
    (folder / "images" / ".hidden.png").write_bytes(b"junk")
    (folder / "images" / "notes.txt").write_text("not an image")
    (folder / "images" / "deeper").mkdir()
    Image.new("RGB", (16, 16)).save(folder / "images" / "deeper" / "x.png")  # not directly in images/: ignored
    return folder


@pytest.mark.parametrize("layout", ["flat", "splits"])
def test_the_listing_pairs_and_splits_as_the_local_folder(tmp_path, s3_env, layout):
    if layout == "flat":
        folder = with_extras(write_segmentation_folder(tmp_path / "seg", count=12))
    else:
        for split, count in (("train", 9), ("test", 3)):  # no val/: carved from train by seed
            write_segmentation_folder(tmp_path / "seg" / split, count=count)
        folder = tmp_path / "seg"
    uri = upload_folder(folder, f"seg-{layout}", "data/set")
    local = scan_segmentation_folder(folder, val_fraction=0.25, test_fraction=0.2, seed=4)
    remote = scan_remote_segmentation(ObjectStore(uri), val_fraction=0.25, test_fraction=0.2, seed=4)
    assert relative(remote, uri) == relative(local, str(folder))
    assert all(remote[split] for split in ("train", "val", "test"))


def test_a_missing_mask_and_a_missing_layout_name_the_uri(tmp_path, s3_env):
    folder = write_segmentation_folder(tmp_path / "seg", count=4)
    (folder / "masks" / "2.png").unlink()
    uri = upload_folder(folder, "seg-missing", "x")
    with pytest.raises(FileNotFoundError, match=r"no mask for image 'seg-missing/x/images/2\.png'.*expected "
                                                r"'s3://seg-missing/x/masks/2\.png'"):
        scan_remote_segmentation(ObjectStore(uri))
    with pytest.raises(FileNotFoundError, match=r"data\.root='s3://seg-missing/x/images' has neither images/"):
        scan_remote_segmentation(ObjectStore(uri + "/images"))


def test_a_mask_gone_after_the_listing_is_skipped_and_recorded_by_its_uri(tmp_path, s3_env):
    from transferkit.data.segmentation import MaskFileSource
    from transferkit.data.vanished import SkipLog, SkippedImage

    uri = upload_folder(write_segmentation_folder(tmp_path / "seg", count=4), "seg-gone", "x")
    store = ObjectStore(uri)
    pairs = scan_remote_segmentation(store, val_fraction=0.0, test_fraction=0.0)["train"]
    skips = SkipLog.create(max_bad_fraction=0.5, total=len(pairs), skipped_at_scan=0)
    source = MaskFileSource(pairs, num_classes=3, skips=skips, store=store)
    delete_object(store.uri_of(pairs[1][1]))
    image, mask = source[0]
    assert image.shape == (16, 16, 3) and mask.shape == (16, 16)
    with pytest.raises(SkippedImage):
        source[1]
    assert [(str(path), reason) for path, reason in skips.entries()] == [
        (str(Path(store.uri_of(pairs[1][1]))), "object not found")]


def test_an_optimized_root_is_refused_for_segmentation_in_one_line(tmp_path):
    from transferkit.data.segmentation import SegmentationDataModule
    from transferkit.data.streaming.optimize import MANIFEST

    (tmp_path / MANIFEST).write_text("{}")
    data = SegmentationDataModule(root=str(tmp_path), num_classes=3)
    with pytest.raises(ValueError, match=r"is an optimized classification data set \(`optimize`\); segmentation "
                                         r"streams raw only"):
        data.scan()


@pytest.mark.slow
def test_fit_on_the_store_matches_the_same_folder_on_local_disk(tmp_path, s3_env, fast):
    folder = write_segmentation_folder(tmp_path / "seg", shape=(32, 32), count=12)
    uri = upload_folder(folder, "seg-fit", "data/set")
    common = [o for o in fast if not o.startswith("run_dir=")] + ["recipe=fcn8s", "data.num_classes=3", "seed=5",
                                                                  "trainer.max_epochs=2", "data.val_fraction=0.25",
                                                                  "data.test_fraction=0.25"]
    runs, splits = fit_local_and_remote(folder, uri, common, tmp_path)
    for record in splits.values():
        assert record["train"] and record["val"] and record["test"]
    assert relative(splits["remote"], uri) == relative(splits["local"], str(folder))
    assert runs["remote"]["metrics"] == runs["local"]["metrics"]  # bit-identical: same bytes, same order
    assert "test/miou" in runs["remote"]["metrics"]
