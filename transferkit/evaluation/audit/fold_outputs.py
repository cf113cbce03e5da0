"""A `cv` run's out-of-fold probabilities, saved by each fold and read back by `audit cv=<cv dir>`.

Each fold saves `audit_outputs.npz`: its best checkpoint's probabilities on its validation split
(the images it held out) and on the test split (which no fold trains on), with each image's name
(its path relative to data.root) and pixel digest (the embedded data is matched by digest). A cv
directory made from other data is refused, naming what differs.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from transferkit.errors import ConfigError
from transferkit.evaluation.audit.images import AuditImages, audit_images
from transferkit.evaluation.audit.probabilities import OutOfSample
from transferkit.inference.predictor import probabilities, task_predictor

log = logging.getLogger("transferkit")

OUTPUTS_FILE = "audit_outputs.npz"
SHOWN = 5


def save_fold_outputs(task, datamodule, fold_dir: Path, batch_size: int) -> Path:
    """The fold's probabilities on its val and test images (after its best checkpoint was tested)."""
    images = audit_images(datamodule)
    held = np.flatnonzero(images.splits != "train")
    task.eval()  # the best checkpoint's weights as tested; Lightning leaves the module in train mode
    probs, failed = probabilities(task_predictor(task), [images.pixels(i) for i in held], batch_size, 0)
    kept = [k for k in range(len(held)) if k in probs]
    path = Path(fold_dir) / OUTPUTS_FILE
    np.savez_compressed(path, names=np.array([images.names[held[k]] for k in kept], dtype=str),
                        digests=images.digests[held[kept]], splits=images.splits[held[kept]].astype(str),
                        probs=np.stack([probs[k] for k in kept]) if kept else np.zeros((0, len(images.class_names))),
                        class_names=np.array(images.class_names, dtype=str), root=np.array(images.root or ""))
    if failed:
        log.warning("cv: %d held-out images of %s could not be read for audit_outputs.npz", len(failed), fold_dir)
    return path


def read_fold(path: Path) -> dict:
    with np.load(path, allow_pickle=False) as saved:
        return {key: saved[key] for key in saved.files}


def fold_files(cv_dir: str) -> list[Path]:
    root = Path(str(cv_dir)).expanduser()
    folds = sorted((root / "folds").glob(f"*/{OUTPUTS_FILE}"), key=lambda p: int(p.parent.name))
    if not folds:
        raise ConfigError(f"cv={str(cv_dir)!r} holds no folds/<k>/{OUTPUTS_FILE}; give the directory of a cv run "
                          "(python -m transferkit cv data.num_folds=5 ... saves them), or drop cv= to score the "
                          "labels with a k-fold solved head.")
    return folds


def cv_probabilities(cv_dir: str, images: AuditImages) -> OutOfSample:
    """Each image's probabilities from the folds that held it out (test: the folds' mean)."""
    total = np.zeros((len(images), len(images.class_names)), dtype=np.float64)
    seen = np.zeros(len(images), dtype=np.int64)
    keys = images.names if images.files else [bytes(d) for d in images.digests]
    where = {key: i for i, key in enumerate(keys)}
    for path in fold_files(cv_dir):
        fold = read_fold(path)
        check_same_data(cv_dir, fold, images)
        fold_keys = fold["names"].tolist() if images.files else [bytes(d) for d in fold["digests"]]
        for key, p in zip(fold_keys, fold["probs"]):
            if key in where:
                total[where[key]] += p
                seen[where[key]] += 1
    missing = np.flatnonzero(seen == 0)
    if len(missing):
        raise ConfigError(f"cv={str(cv_dir)!r} has no out-of-fold probabilities for {len(missing)} of these "
                          f"{len(images)} images (e.g. {[images.names[i] for i in missing[:SHOWN]]}): it was run on "
                          "other data or other splits. Run cv on this data, or drop cv= (a k-fold solved head).")
    probs = (total / seen[:, None]).astype(np.float32)
    accuracy = float((probs.argmax(1) == images.labels).mean())
    record = {"source": f"cv run {cv_dir}", "folds": len(fold_files(cv_dir)), "accuracy": round(accuracy, 4)}
    return OutOfSample(probs, record["source"], record)


def check_same_data(cv_dir: str, fold: dict, images: AuditImages) -> None:
    names = fold["class_names"].tolist()
    if names != images.class_names:
        raise ConfigError(f"cv={str(cv_dir)!r} was trained on the classes {names}, this data has "
                          f"{images.class_names}: audit a cv run of the same data (data.root).")
    root = str(fold["root"]) or None
    if not same_root(root, images.root):
        raise ConfigError(f"cv={str(cv_dir)!r} was run on data.root={root!r}, this audit on "
                          f"data.root={images.root!r}: audit a cv run of the same data.")


def same_root(a: str | None, b: str | None) -> bool:
    """Both the embedded data, or the same folder (however it was spelled)."""
    return a == b or (a is not None and b is not None and Path(a).resolve() == Path(b).resolve())
