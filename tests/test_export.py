"""`export` (ONNX, TorchScript) with checked parity, and `predict` from the exported file."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.conftest import write_class_folder
from transferkit import cli

pytestmark = pytest.mark.slow

TINY = ["model.backbone=test_resnet", "data.image_size=32", "data.batch_size=4", "data.num_workers=0",
        "trainer.max_epochs=1", "trainer.accelerator=cpu", "trainer.devices=1",
        "trainer.enable_progress_bar=false", "trainer.enable_model_summary=false"]


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("export")


@pytest.fixture(scope="module")
def folder(work) -> Path:
    return write_class_folder(work / "images", per_class=6)


@pytest.fixture(scope="module")
def cls_ckpt(work, folder, test_resnet_weights) -> Path:
    results = cli.run(["fit", "recipe=small_similar", f"data.root={folder}", *TINY,
                       f"model.weights={test_resnet_weights}", f"run_dir={work / 'fit_cls'}"])
    return Path(results["best_checkpoint"])


@pytest.fixture(scope="module")
def seg_ckpt(work, test_resnet_weights) -> Path:
    results = cli.run(["fit", "recipe=fcn8s", *TINY, f"model.weights={test_resnet_weights}",
                       "data.embedded_length=8", f"run_dir={work / 'fit_seg'}"])
    return Path(results["best_checkpoint"])


def export(ckpt: Path, run_dir: Path, *overrides: str) -> dict:
    return cli.run(["export", f"ckpt_path={ckpt}", f"run_dir={run_dir}", *overrides])


def read_csv(path: Path) -> list[dict]:
    return list(csv.DictReader(path.open()))


def assert_same_predictions(a: Path, b: Path) -> None:
    rows_a, rows_b = read_csv(a), read_csv(b)
    assert [r["path"] for r in rows_a] == [r["path"] for r in rows_b]
    assert [r["label"] for r in rows_a] == [r["label"] for r in rows_b]
    for x, y in zip(rows_a, rows_b):
        assert abs(float(x["probability"]) - float(y["probability"])) <= 1e-4
        assert [t.split(":")[0] for t in x["top_k"].split(";")] == [t.split(":")[0] for t in y["top_k"].split(";")]


@pytest.mark.parametrize("fmt,preprocessing", [("onnx", "false"), ("torchscript", "true")])
def test_classification_export_parity_and_predict_csv(fmt, preprocessing, cls_ckpt, folder, work):
    out = work / f"cls_{fmt}"
    results = export(cls_ckpt, out, f"format={fmt}", f"export.include_preprocessing={preprocessing}")
    name = {"onnx": "model.onnx", "torchscript": "model.torchscript.pt"}[fmt]
    assert sorted(p.name for p in out.iterdir()) == ["config.yaml", "model.meta.json", name, "results.json"]
    meta = json.loads((out / "model.meta.json").read_text())
    parity = meta["parity"]
    assert parity["passed"] and parity["images"] == 2 and parity["argmax_agreement"] == 1.0
    assert parity["max_abs_logit_diff"] < 1e-4 and parity["other_shape"]["passed"]
    assert meta["export"]["include_preprocessing"] == (preprocessing == "true")
    assert meta["input"]["dtype"] == ("uint8" if preprocessing == "true" else "float32")
    assert results["parity"]["passed"]

    from_ckpt, from_export = work / f"ckpt_{fmt}.csv", work / f"exported_{fmt}.csv"
    cli.run(["predict", f"ckpt_path={cls_ckpt}", f"input={folder}", f"output={from_ckpt}", "top_k=2",
             "data.num_workers=0", f"run_dir={work / f'p_ckpt_{fmt}'}"])
    cli.run(["predict", f"ckpt_path={out / name}", f"input={folder}", f"output={from_export}", "top_k=2",
             "data.num_workers=0", f"run_dir={work / f'p_exp_{fmt}'}"])
    assert len(read_csv(from_export)) == 12
    assert_same_predictions(from_ckpt, from_export)


def test_metadata_alone_reproduces_preprocessing(cls_ckpt, folder, work):
    """A user with only model.onnx + model.meta.json (PIL, OpenCV, onnxruntime; no transferkit)
    gets the checkpoint's probabilities."""
    import cv2
    import onnxruntime as ort

    out = work / "cls_meta"
    export(cls_ckpt, out, "format=onnx")
    meta = json.loads((out / "model.meta.json").read_text())
    spec, size = meta["input"], meta["input"]["image_size"]
    assert spec["interpolation"] == "bilinear" and spec["normalization"] == "mean_std" and spec["layout"] == "NCHW"
    paths = sorted(folder.rglob("*.png"))
    pixels = [np.asarray(Image.open(p).convert("RGB" if spec["in_chans"] == 3 else "L")) for p in paths]
    resized = [cv2.resize(x, (size, size), interpolation=cv2.INTER_LINEAR) for x in pixels]
    batch = (np.stack(resized).astype(np.float32) / 255 - spec["mean"]) / spec["std"]
    session = ort.InferenceSession(str(out / "model.onnx"), providers=["CPUExecutionProvider"])
    logits = session.run(None, {spec["name"]: batch.transpose(0, 3, 1, 2).astype(np.float32)})[0]
    probs = np.exp(logits - logits.max(1, keepdims=True))
    probs /= probs.sum(1, keepdims=True)
    reference = work / "ckpt_meta.csv"
    cli.run(["predict", f"ckpt_path={cls_ckpt}", f"input={folder}", f"output={reference}",
             "data.num_workers=0", f"run_dir={work / 'p_meta'}"])
    rows = {Path(r["path"]): r for r in read_csv(reference)}
    for path, p in zip(paths, probs):
        assert meta["class_names"][int(p.argmax())] == rows[path]["label"]
        assert abs(p.max() - float(rows[path]["probability"])) <= 1e-4
    assert meta["source"]["sha256"] == __import__("hashlib").sha256(cls_ckpt.read_bytes()).hexdigest()


@pytest.mark.parametrize("fmt,preprocessing", [("onnx", "true"), ("torchscript", "false")])
def test_fcn8s_export_parity_and_masks(fmt, preprocessing, seg_ckpt, work):
    out = work / f"seg_{fmt}"
    export(seg_ckpt, out, f"format={fmt}", f"export.include_preprocessing={preprocessing}")
    meta = json.loads((out / "model.meta.json").read_text())
    parity = meta["parity"]
    assert meta["task"] == "segmentation" and meta["export"]["dynamic_axes"] == ["batch", "height", "width"]
    assert parity["passed"] and parity["pixel_agreement"] >= 0.9999 and parity["images"] == 64
    assert parity["other_shape"]["passed"] and parity["other_shape"]["shape"][0] == 1
    images = work / f"seg_in_{fmt}"
    images.mkdir()
    rng = np.random.default_rng(0)
    for i, (h, w) in enumerate([(40, 57), (32, 32)]):
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(images / f"s{i}.png")
    name = meta["export"]["file"]
    cli.run(["predict", f"ckpt_path={seg_ckpt}", f"input={images}", f"run_dir={work / f'm_ckpt_{fmt}'}"])
    cli.run(["predict", f"ckpt_path={out / name}", f"input={images}", f"run_dir={work / f'm_exp_{fmt}'}"])
    for i in range(2):
        a = np.asarray(Image.open(work / f"m_ckpt_{fmt}" / f"s{i}_mask.png"))
        b = np.asarray(Image.open(work / f"m_exp_{fmt}" / f"s{i}_mask.png"))
        assert a.shape == b.shape and (a == b).mean() >= 0.999


def test_corrupt_missing_or_lonely_model_files_fail_in_one_line(cls_ckpt, work, folder):
    out = work / "cls_errors"
    export(cls_ckpt, out, "format=onnx")
    broken = work / "broken"
    broken.mkdir()
    (broken / "model.onnx").write_bytes(b"\x08\x07not really onnx")
    (broken / "model.meta.json").write_text((out / "model.meta.json").read_text())
    (work / "broken_ts").mkdir()
    (work / "broken_ts" / "model.torchscript.pt").write_bytes(b"PK\x03\x04truncated")
    (work / "broken_ts" / "model.meta.json").write_text("{}")
    lonely = work / "lonely"
    lonely.mkdir()
    (lonely / "model.onnx").write_bytes((out / "model.onnx").read_bytes())
    cases = {broken / "model.onnx": "not a readable ONNX model", work / "nowhere" / "model.onnx": "does not exist",
             lonely / "model.onnx": "no metadata file", work / "broken_ts" / "model.torchscript.pt": "lacks"}
    for path, what in cases.items():
        proc = subprocess.run([sys.executable, "-m", "transferkit", "predict", f"ckpt_path={path}",
                               f"input={folder}", f"run_dir={work / 'never'}"], capture_output=True, text=True,
                              timeout=300)
        assert proc.returncode == 1, proc.stderr
        error = proc.stderr.splitlines()[0]
        assert error.startswith("transferkit: error:") and str(path) in error and what in error, error
    assert not (work / "never").exists()
