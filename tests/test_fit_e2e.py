"""End to end through the CLI, as a user runs it: fit -> results.json -> predict / test."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch

from transferkit.cli import app as cli
from transferkit.tasks.classification import ClassificationTask

pytestmark = pytest.mark.slow

RESULT_KEYS = {"task", "recipe", "strategy", "backbone", "weights", "data", "params", "metrics",
               "best_checkpoint", "wall_seconds"}


def test_fit_writes_run_directory_then_predict_and_test(image_folder, fast, tmp_path):
    results = cli.run(["fit", "recipe=small_similar", f"data.root={image_folder}", *fast])
    run_dir = Path(results["run_dir"])
    for name in ("config.yaml", "results.json", "metrics.csv", "splits.json",
                 "checkpoints/best.ckpt", "checkpoints/last.ckpt"):
        assert (run_dir / name).is_file(), name
    saved = json.loads((run_dir / "results.json").read_text())
    assert RESULT_KEYS <= set(saved)
    assert saved["recipe"] == "small_similar" and saved["strategy"] == "freeze"
    assert saved["data"]["class_names"] == ["cat", "dog"]
    assert saved["data"]["train_size"] + saved["data"]["val_size"] + saved["data"]["test_size"] == 12
    assert "test/acc" in saved["metrics"]
    # Checkpoints hold only what torch.load(weights_only=True) allows: predict/test/resume read them so.
    assert saved["best_checkpoint"] == "checkpoints/best.ckpt"  # relative to the run: the directory may move
    best = run_dir / saved["best_checkpoint"]
    assert torch.serialization.get_unsafe_globals_in_checkpoint(best) == []
    head = sum(p.numel() for p in ClassificationTask.load_from_checkpoint(best).head.parameters())
    assert saved["params"]["trainable"] == head < saved["params"]["total"]

    out = tmp_path / "preds.csv"
    cli.run(["predict", f"ckpt_path={best}", f"input={image_folder}",
             f"output={out}", "top_k=2", f"run_dir={tmp_path / 'pred'}"])
    rows = list(csv.DictReader(out.open()))
    assert len(rows) == 12
    assert {r["label"] for r in rows} <= {"cat", "dog"}
    assert all(len(r["top_k"].split(";")) == 2 for r in rows)

    # `test` reuses the config saved in the checkpoint's run: same data, model and split.
    tested = cli.run(["test", f"ckpt_path={best}", f"run_dir={tmp_path / 'test'}"])
    assert tested["metrics"]["test/acc"] == pytest.approx(saved["metrics"]["test/acc"])


def test_checkpoint_reloads_without_hydra_and_predicts_the_same(image_folder, fast):
    results = cli.run(["fit", f"data.root={image_folder}", *fast])
    task = ClassificationTask.load_from_checkpoint(results["last_checkpoint"]).eval()
    again = ClassificationTask.load_from_checkpoint(results["last_checkpoint"]).eval()
    x = torch.randn(2, 3, 32, 32)
    assert torch.allclose(task(x), again(x))
    assert task.class_names == ["cat", "dog"]


def test_predict_never_overwrites(image_folder, fast, tmp_path):
    results = cli.run(["fit", f"data.root={image_folder}", *fast])
    out = tmp_path / "exists.csv"
    out.write_text("mine")
    with pytest.raises(FileExistsError, match="exists.csv"):
        cli.run(["predict", f"ckpt_path={results['best_checkpoint']}", f"input={image_folder}",
                 f"output={out}", f"run_dir={tmp_path / 'p'}"])
    assert out.read_text() == "mine"
