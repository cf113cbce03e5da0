"""A run written by an older transferkit still works with this one.

`fixtures/old_run/` is a real, tiny `fit` run (`test_efficientnet` from random init on a 42-image,
3-class folder, 2 epochs) made by transferkit at commit 14db8c3 with `fixtures/make_old_run.py`
(its docstring says how to rebuild it). Each test copies it into `tmp_path` (a resume rewrites the
run in place) and drives it the way a user would, through `python -m transferkit ...` and
`transferkit.load`.

Paths: `config.yaml` and `splits.json` record `data.root: images` (relative, as given; the images sit
beside `run/` in the fixture), `results.json` records absolute paths under the scratch directory the
run was made in (which does not exist here). So every command runs with the copy as its working
directory, `test` gets `data.root=<copy>/images`, and `fit resume=` gets no `data.root=` (resume keeps
the run's config.yaml and refuses it): the recorded relative root resolves from the working directory.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

FIXTURE = Path(__file__).resolve().parent / "fixtures" / "old_run"
RECORDED = json.loads((FIXTURE / "run" / "results.json").read_text())
CLASSES = ["blue", "green", "red"]
QUIET = ["trainer.enable_progress_bar=false"]


@pytest.fixture
def old_run(tmp_path: Path) -> Path:
    """A private copy of the fixture: <copy>/images/{train,val,test}/<class>/*.png and <copy>/run/."""
    copy = tmp_path / "old_run"
    shutil.copytree(FIXTURE, copy)
    return copy


def transferkit(*args: str, cwd: Path, timeout: int = 600) -> subprocess.CompletedProcess:
    env = {**os.environ, "NO_ALBUMENTATIONS_UPDATE": "1"}
    proc = subprocess.run([sys.executable, "-m", "transferkit", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=timeout)
    assert proc.returncode == 0, f"exit {proc.returncode}\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"
    return proc


def read_json(path: Path) -> dict:
    return json.loads(path.read_text())


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_fixture_is_what_the_tests_expect():
    assert RECORDED["command"] == "fit" and RECORDED["status"] == "completed" and RECORDED["epochs"] == 2
    assert RECORDED["data"]["class_names"] == CLASSES
    assert {"test/acc", "test/f1", "test/loss", "val/acc", "best/val/acc"} <= set(RECORDED["metrics"])
    for name in ("best.ckpt", "last.ckpt"):
        assert (FIXTURE / "run" / "checkpoints" / name).stat().st_size > 100_000
    assert sum(p.stat().st_size for p in FIXTURE.rglob("*") if p.is_file()) < 2_500_000


@pytest.mark.slow
def test_test_reproduces_the_recorded_metrics(old_run: Path):
    out = old_run.parent / "test_run"
    transferkit("test", f"ckpt_path={old_run / 'run' / 'checkpoints' / 'best.ckpt'}",
                f"data.root={old_run / 'images'}", f"run_dir={out}", "data.num_workers=0", *QUIET, cwd=old_run)
    results = read_json(out / "results.json")
    assert results["command"] == "test" and results.get("status", "completed") == "completed"
    recorded = {k: v for k, v in RECORDED["metrics"].items() if k.startswith("test/")}
    assert recorded and set(recorded) <= set(results["metrics"])
    for key, value in recorded.items():
        assert results["metrics"][key] == pytest.approx(value, rel=1e-5, abs=1e-6), key


@pytest.mark.slow
def test_predict_a_folder(old_run: Path):
    out = old_run.parent / "preds.csv"
    folder = old_run / "images" / "test"  # 3 images per class, in class sub-folders
    transferkit("predict", f"ckpt_path={old_run / 'run' / 'checkpoints' / 'best.ckpt'}", f"input={folder}",
                f"output={out}", f"run_dir={old_run.parent / 'predict_run'}", "top_k=2", cwd=old_run)
    with out.open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 9
    assert set(rows[0]) >= {"path", "label", "probability", "top_k", "error"}
    assert all(not r["error"] and r["label"] in CLASSES and 0.0 < float(r["probability"]) <= 1.0 for r in rows)
    assert all(len(r["top_k"].split(";")) == 2 for r in rows)
    # the same model on the same test images: the labels score the accuracy the fit recorded
    correct = sum(Path(r["path"]).parent.name == r["label"] for r in rows)
    assert correct / len(rows) == pytest.approx(RECORDED["metrics"]["test/acc"], abs=1e-6)


EXPORT_FORMATS = [("torchscript", "model.torchscript.pt"), ("onnx", "model.onnx")]


@pytest.mark.slow
@pytest.mark.parametrize("fmt, filename", EXPORT_FORMATS, ids=[f for f, _ in EXPORT_FORMATS])
def test_export(old_run: Path, fmt: str, filename: str):
    if fmt == "onnx":
        for module in ("onnx", "onnxscript", "onnxruntime"):
            pytest.importorskip(module)
    out = old_run.parent / f"export_{fmt}"
    transferkit("export", f"ckpt_path={old_run / 'run' / 'checkpoints' / 'best.ckpt'}", f"format={fmt}",
                f"input={old_run / 'images' / 'test'}", f"run_dir={out}", cwd=old_run)
    assert (out / filename).stat().st_size > 100_000
    meta = read_json(out / "model.meta.json")
    assert list(meta["class_names"]) == CLASSES
    assert read_json(out / "results.json").get("status", "completed") == "completed"


@pytest.mark.slow
def test_resume_trains_one_more_epoch(old_run: Path):
    run = old_run / "run"
    before = sha256(run / "checkpoints" / "last.ckpt")
    rows_before = (run / "metrics.csv").read_text().splitlines()
    # the run's config.yaml says data.root: images, relative, so the copy is the working directory (a
    # moved data folder would be given as data.root=<new place>: tests/test_faults_moved_run.py)
    transferkit("fit", f"resume={run}", "trainer.max_epochs=3", "data.num_workers=0", *QUIET, cwd=old_run)
    results = read_json(run / "results.json")
    assert results["status"] == "completed" and results["epochs"] == 3
    assert len(results["resumes"]) == 1
    assert results["run_dir"] == "."  # the run's own paths are written relative to it (runtime/run_paths.py)
    assert results["best_checkpoint"] == "checkpoints/best.ckpt"  # was absolute, under where the run was made
    assert {"test/acc", "test/f1", "test/loss", "val/acc"} <= set(results["metrics"])
    assert sha256(run / "checkpoints" / "last.ckpt") != before
    with (run / "metrics.csv").open(newline="") as handle:
        epochs = {row["epoch"] for row in csv.DictReader(handle)}
    assert {"0", "1", "2"} <= epochs  # the old epochs kept, the third appended
    assert len((run / "metrics.csv").read_text().splitlines()) > len(rows_before)


def test_load_the_run(old_run: Path):
    import numpy as np

    import transferkit as tk

    run = tk.load(old_run / "run")
    assert run.dir == old_run / "run"
    assert run.results["metrics"] == RECORDED["metrics"]
    assert run.results["data"]["class_names"] == CLASSES
    assert run.config.data.root == "images" and run.config.model.backbone == "test_efficientnet"
    assert list(run.task.class_names) == CLASSES
    image = np.zeros((32, 32, 3), np.uint8)
    image[:] = (200, 50, 40)
    predictions = run.predict([image], top_k=2)
    records = predictions.to_dict("records") if hasattr(predictions, "to_dict") else predictions
    assert len(records) == 1 and records[0]["label"] in CLASSES and not records[0]["error"]
