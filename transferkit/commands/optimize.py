"""`python -m transferkit optimize data.root=<folder or URI> out=<folder or URI>`: the data in LitData's format.

The folder (local, or `s3://...`) is scanned and split by `fit`'s rules, and each split is written as a LitData
optimized data set with the split stored beside it; `fit data.root=<out>` then streams it (`StreamingDataset`,
a bounded chunk cache: `data.stream_cache`). A stopped write resumes: run the same command again.
"""

from __future__ import annotations

import logging
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from transferkit.data.folders import scan_image_folder
from transferkit.data.streaming.optimize import write_optimized
from transferkit.data.streaming.remote_scan import scan_remote_folder
from transferkit.data.streaming.store import ObjectStore, is_remote
from transferkit.errors import ConfigError
from transferkit.training.rundir import create_run_dir, write_json

log = logging.getLogger("transferkit")


def run(cfg: DictConfig) -> dict:
    data = OmegaConf.to_container(cfg.data, resolve=True)
    root, out = data.get("root"), cfg.get("out")
    if not root or not out:
        raise ConfigError(f"optimize needs data.root=<folder or s3://bucket/prefix> and out=<folder or URI> "
                          f"(got data.root={root!r}, out={out!r}).")
    if cfg.task.kind != "classification":
        raise ConfigError(f"task.kind={cfg.task.kind!r}: optimize writes classification folders only.")
    options = dict(data.get("storage_options") or {})
    splits = {"val_fraction": data["val_fraction"], "test_fraction": data["test_fraction"], "seed": int(cfg.seed)}
    if is_remote(root):
        store = ObjectStore(str(root), options)
        scan, read = scan_remote_folder(store, **splits), store.read_bytes
    else:
        scan = scan_image_folder(root, max_bad_fraction=data["max_bad_fraction"], **splits)
        read = Path.read_bytes
    manifest = write_optimized(scan, read, str(out), options)
    log.info("Optimized %s into %s: %s images per split; train with data.root=%s", root, out, manifest["counts"],
             out)
    run_dir = create_run_dir(cfg.get("run_dir"))  # results.json: what was written where (transferkit.optimize's Run)
    results = {"command": "optimize", "root": str(root), "out": str(out), "classes": manifest["classes"],
               "counts": manifest["counts"], "skipped": manifest["skipped"], "run_dir": str(run_dir)}
    write_json(results, run_dir / "results.json")
    return results
