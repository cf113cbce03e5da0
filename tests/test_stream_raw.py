"""`data.root=s3://bucket/prefix`: a folder in an object store, listed and read lazily, on a real S3 server
(moto, on localhost) gives the splits and metrics of the same images on local disk."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from tests.conftest import write_class_folder
from tests.s3_store import delete_object, fit_local_and_remote, put_object, s3_endpoint, s3_env, upload_folder  # noqa: F401
from transferkit.data.streaming.remote_scan import scan_remote_folder
from transferkit.data.streaming.store import ObjectStore

pytest.importorskip("s3fs")


def local_and_remote(tmp_path: Path, bucket: str, **kwargs) -> tuple[Path, str]:
    folder = write_class_folder(tmp_path / "images", **kwargs)
    (folder / "cat" / "nested").mkdir()
    Image.new("RGB", (32, 32), (200, 10, 10)).save(folder / "cat" / "nested" / "a.png")
    Image.new("RGB", (32, 32), (220, 30, 10)).save(folder / "cat" / "zz.png")  # os.walk: before nested/a.png
    (folder / "cat" / ".DS_Store").write_bytes(b"junk")
    (folder / "dog" / "notes.txt").write_text("not an image")
    return folder, upload_folder(folder, bucket, "data/set")


def relative_splits(record: dict) -> dict:
    return record["splits"]


def test_the_listing_gives_the_local_folders_splits(tmp_path, s3_env):
    from transferkit.data.folders import scan_image_folder

    folder, uri = local_and_remote(tmp_path, "listing", per_class=8)
    local = scan_image_folder(folder, val_fraction=0.25, test_fraction=0.25, seed=3)
    remote = scan_remote_folder(ObjectStore(uri), val_fraction=0.25, test_fraction=0.25, seed=3)
    assert remote.class_names == local.class_names
    assert relative_splits(remote.to_json()) == relative_splits(local.to_json())
    assert remote.to_json()["root"] == uri


def test_the_split_layout_is_read_from_objects(tmp_path, s3_env):
    folder = write_class_folder(tmp_path / "images", per_class=3, splits=("train", "validation"))
    uri = upload_folder(folder, "layout", "x")
    scan = scan_remote_folder(ObjectStore(uri + "/"), val_fraction=0.5, test_fraction=0.0)
    assert scan.layout == "splits" and [len(scan.splits[s]) for s in ("train", "val")] == [6, 6]


def test_a_missing_bucket_is_named_in_one_line(s3_env):
    with pytest.raises(FileNotFoundError, match=r"data\.root='s3://no-such-bucket/x': the bucket 'no-such-bucket' "
                                                r"does not exist at http://127\.0\.0\.1"):
        scan_remote_folder(ObjectStore("s3://no-such-bucket/x"))


def test_an_empty_prefix_is_named(tmp_path, s3_env):
    upload_folder(write_class_folder(tmp_path / "i", per_class=1), "emptyprefix", "here")
    with pytest.raises(FileNotFoundError, match=r"'s3://emptyprefix/elsewhere' holds no objects"):
        scan_remote_folder(ObjectStore("s3://emptyprefix/elsewhere"))


@pytest.mark.slow  # a fresh interpreter: about 30 s
def test_missing_credentials_are_named_before_training(tmp_path, s3_endpoint):
    env = {"PATH": "/usr/bin:/bin", "AWS_ENDPOINT_URL": s3_endpoint, "AWS_EC2_METADATA_DISABLED": "true",
           "AWS_SHARED_CREDENTIALS_FILE": str(tmp_path / "none"), "AWS_CONFIG_FILE": str(tmp_path / "none"),
           "HOME": str(tmp_path), "NO_ALBUMENTATIONS_UPDATE": "1"}
    proc = subprocess.run([sys.executable, "-m", "transferkit", "fit", "data.root=s3://bucket/prefix",
                           "model.backbone=test_resnet", "model.weights=none", f"run_dir={tmp_path / 'run'}"],
                          env=env, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert proc.returncode != 0
    lines = [line for line in proc.stderr.splitlines() if "no credentials found" in line]
    assert lines and "data.root='s3://bucket/prefix'" in lines[0], proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr and not (tmp_path / "run" / "checkpoints").exists()


def test_an_image_gone_or_damaged_after_the_listing_is_skipped_and_recorded(tmp_path, s3_env):
    from transferkit.data.sources import FileSource
    from transferkit.data.vanished import SkipLog, SkippedImage

    _, uri = local_and_remote(tmp_path, "vanish", per_class=3)
    store = ObjectStore(uri)
    scan = scan_remote_folder(store, val_fraction=0.0, test_fraction=0.0)
    items = scan.splits["train"]
    skips = SkipLog.create(max_bad_fraction=0.5, total=len(items), skipped_at_scan=0)
    source = FileSource(items, skips=skips, store=store)
    gone, damaged = store.uri_of(items[0][0]), store.uri_of(items[2][0])
    delete_object(gone)
    put_object(damaged, b"\x89PNG half a file")
    assert source[1][0].shape == (32, 32, 3)
    for index in (0, 2):
        with pytest.raises(SkippedImage):
            source[index]
    assert [(path, reason.split(":")[0]) for path, reason in skips.entries()] == [
        (Path(gone), "object not found"), (Path(damaged), "not an image Pillow can identify")]


@pytest.mark.slow
def test_fit_on_the_store_matches_the_same_images_on_local_disk(tmp_path, s3_env, fast):
    folder, uri = local_and_remote(tmp_path, "fit", per_class=6)
    common = [o for o in fast if not o.startswith("run_dir=")] + ["finetune=full", "trainer.max_epochs=2", "seed=5"]
    runs, splits = fit_local_and_remote(folder, uri, common, tmp_path)
    assert splits["remote"]["splits"] == splits["local"]["splits"] and splits["remote"]["root"] == uri
    assert runs["remote"]["metrics"] == runs["local"]["metrics"]  # bit-identical: same bytes, same order
    assert runs["remote"]["data"]["root"] == uri


@pytest.mark.slow  # a fresh interpreter: about 30 s
def test_without_the_stream_extra_an_s3_root_names_it_in_one_line(tmp_path):
    code = ("import runpy, sys; sys.modules['s3fs'] = None; sys.argv = ['transferkit', 'fit', 'data.root=s3://b/p', "
            "'model.backbone=test_resnet', 'model.weights=none']; runpy.run_module('transferkit', run_name='__main__')")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, cwd=tmp_path,
                          env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "NO_ALBUMENTATIONS_UPDATE": "1"})
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    assert "data.root='s3://b/p' needs the stream extra (s3fs); install it: pip install \".[stream]\"" in proc.stderr
