"""`python -m transferkit optimize` writes LitData's optimized format with the split stored; `fit data.root=<it>`
streams it (StreamingDataset / StreamingDataLoader, chunk cache in data.stream_cache), on a real local S3 server."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.conftest import write_class_folder
from tests.s3_store import s3_endpoint, s3_env, upload_folder  # noqa: F401

pytest.importorskip("litdata")


def optimize(root: str, out: str, *extra: str) -> dict:
    import tempfile

    from transferkit.cli import app as cli

    run_dir = Path(tempfile.mkdtemp(prefix="optimize-run-")) / "run"  # results.json of the command
    return cli.run(["optimize", f"data.root={root}", f"out={out}", "data.val_fraction=0.25",
                    "data.test_fraction=0.25", "seed=3", f"run_dir={run_dir}", *extra])


def test_optimize_stores_the_fit_split_and_resumes(tmp_path):
    from transferkit.data.folders import scan_image_folder
    from transferkit.data.streaming.optimize import MANIFEST

    folder = write_class_folder(tmp_path / "images", per_class=8)
    (folder / "dog" / "7.png").write_bytes(b"broken")  # skipped at scan, like fit does
    out = tmp_path / "optimized"
    first = optimize(str(folder), str(out), "data.max_bad_fraction=0.1")
    scan = scan_image_folder(folder, val_fraction=0.25, test_fraction=0.25, seed=3, max_bad_fraction=0.1)
    manifest = json.loads((out / MANIFEST).read_text())
    assert manifest["splits"] == scan.to_json()["splits"] and manifest["classes"] == ["cat", "dog"]
    assert first["counts"] == {split: len(items) for split, items in scan.splits.items()}
    assert json.loads((Path(first["run_dir"]) / "results.json").read_text())["out"] == str(out)
    stamps = {p: p.stat().st_mtime_ns for p in out.glob("*/*.bin")}
    (out / MANIFEST).unlink()
    (out / "test" / "index.json").unlink()  # stopped while writing test/: the rerun writes only that
    again = optimize(str(folder), str(out), "data.max_bad_fraction=0.1")
    assert again["counts"] == first["counts"] and (out / MANIFEST).is_file()
    assert all(p.stat().st_mtime_ns == t for p, t in stamps.items() if p.parent.name != "test")


def test_optimize_into_other_data_is_refused(tmp_path):
    out = tmp_path / "optimized"
    optimize(str(write_class_folder(tmp_path / "a", per_class=4)), str(out))
    with pytest.raises(FileExistsError, match="holds an optimize of other data"):
        optimize(str(write_class_folder(tmp_path / "b", per_class=5)), str(out))


@pytest.mark.slow
def test_fit_streams_an_optimized_store_with_the_folders_split(tmp_path, s3_env, fast):
    from transferkit.cli import app as cli

    folder = write_class_folder(tmp_path / "images", per_class=8)
    uri = upload_folder(folder, "optimized", "raw")
    optimize(uri, "s3://optimized/ready")  # from the store into the store
    cache = tmp_path / "cache"
    common = [o for o in fast if not o.startswith("run_dir=")] + ["finetune=full", "trainer.max_epochs=2", "seed=3",
                                                                  "data.val_fraction=0.25", "data.test_fraction=0.25"]
    results = cli.run(["fit", "data.root=s3://optimized/ready", *common, f"data.stream_cache={cache}",
                       "data.stream_cache_size=50MB", f"run_dir={tmp_path / 'streamed'}"])
    local = cli.run(["fit", f"data.root={folder}", *common, f"run_dir={tmp_path / 'local'}"])
    assert results["status"] == "completed" and results["epochs"] == 2
    splits = [json.loads((tmp_path / run / "splits.json").read_text())["splits"] for run in ("streamed", "local")]
    assert splits[0] == splits[1]
    assert {k: results["data"][k] for k in ("train_size", "val_size", "test_size")} == \
        {k: local["data"][k] for k in ("train_size", "val_size", "test_size")} == \
        {"train_size": 8, "val_size": 4, "test_size": 4}
    assert list(cache.rglob("*.bin")), "chunks are cached under data.stream_cache"
    report = json.loads((tmp_path / "streamed" / "results.json").read_text())
    assert report["metrics"]["test/acc"] in {i / 4 for i in range(5)}  # 4 test images, each counted once


@pytest.mark.parametrize(("cache_size", "mapped"), [("1GB", True), ("2KB", False)])
def test_a_worker_maps_the_chunk_it_shares_only_when_the_cache_keeps_every_chunk(tmp_path, s3_env, cache_size,
                                                                                 mapped):
    """LitData reads a chunk that two loader workers share without its memory map, re-reading the whole chunk
    file for nearly every item (0.3x the local folder with 2 workers); mapped where nothing is ever deleted."""
    from litdata.utilities.env import _WorkerEnv

    from transferkit.data.streaming.optimized import optimized_sources, read_manifest
    from transferkit.data.transforms import build_transforms

    optimize(upload_folder(write_class_folder(tmp_path / "images", per_class=8), "mapped", "raw"), "s3://mapped/ready")
    split = optimized_sources("s3://mapped/ready", read_manifest("s3://mapped/ready"), {}, str(tmp_path / "cache"),
                              cache_size)["train"]
    dataset = split.dataset(build_transforms("none", False, 32, (0.5,), (0.5,)), train=True, seed=0)
    dataset._forced_worker_env = _WorkerEnv(world_size=2, rank=0)  # worker 0 of 2: the one chunk is shared
    image, label = next(iter(dataset))
    assert image.shape == (3, 32, 32) and label in (0, 1)
    assert dataset.worker_chunks == [0]
    assert (0 in dataset.cache._reader._item_loader._mmap_allowed_chunks) is mapped


def test_an_optimized_split_reads_an_image_by_index_as_the_folder_decodes_it(tmp_path):
    """The linear probe of finetune=freeze reads the train split as a source of decoded images."""
    from transferkit.data.decode import load_image
    from transferkit.data.folders import scan_image_folder
    from transferkit.data.streaming.optimized import optimized_sources, read_manifest

    folder = write_class_folder(tmp_path / "images", per_class=8)
    out = str(tmp_path / "optimized")
    optimize(str(folder), out)
    split = optimized_sources(out, read_manifest(out), {}, None, "1GB")["train"]
    items = scan_image_folder(folder, val_fraction=0.25, test_fraction=0.25, seed=3).splits["train"]
    for index in (0, len(items) - 1):
        image, label = split[index]
        assert label == items[index][1] and (image == load_image(items[index][0])).all()
    with pytest.raises(IndexError):
        split[len(items)]


def test_evaluation_reads_each_chunk_once_then_from_the_cache(tmp_path, s3_env):
    """Read by index, LitData fetched every item's bytes from the store on every pass; cached once it fits."""
    import logging

    from transferkit.data.datamodule import ClassificationDataModule

    optimize(upload_folder(write_class_folder(tmp_path / "images", per_class=8), "evalcache", "raw"),
             "s3://evalcache/ready")
    data = ClassificationDataModule(root="s3://evalcache/ready", image_size=32, batch_size=2, num_workers=0,
                                    val_fraction=0.25, test_fraction=0.25, stream_cache=str(tmp_path / "cache"))
    data.scan()
    requests: list[str] = []
    handler = logging.Handler()
    handler.emit = lambda record: requests.append(record.getMessage())
    server_log = logging.getLogger("werkzeug")
    level = server_log.level
    server_log.setLevel(logging.INFO)
    server_log.addHandler(handler)
    try:
        loader, passes = data.val_dataloader(), []
        for _ in range(2):
            requests.clear()
            assert sum(len(images) for images, _ in loader) == 4
            passes.append([line for line in requests if "chunk-" in line])
    finally:
        server_log.removeHandler(handler)
        server_log.setLevel(level)
    assert len(passes[0]) == 1 and passes[1] == []  # one chunk GET, then nothing
