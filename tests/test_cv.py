"""`cv`: one fit per stratified fold in folds/<k>/, cv.csv, results.json (folds, mean, std, the folds'
ensemble on the test split); an interrupted cv resumes, skipping the finished folds."""

from __future__ import annotations

import csv
import json
import os
import signal
from pathlib import Path

import numpy as np
import pytest

from conftest import write_class_folder
from transferkit.training import builders
from transferkit.cli import app as cli
from transferkit.training.cv import fold_action
from transferkit.errors import ConfigError
from transferkit.runtime.guards import RunInterrupted


def test_embedded_folds_partition_train_and_val_and_keep_test():
    from transferkit.data.datamodule import ClassificationDataModule

    plain = ClassificationDataModule()
    plain.scan()
    vals, tests = [], []
    for k in range(3):
        data = ClassificationDataModule(num_folds=3, fold=k)
        data.scan()
        vals.append(set(data.split_record["val_indices"]))
        tests.append(data.labels("test"))
        assert data.sizes()["train"] + data.sizes()["val"] == plain.sizes()["train"] + plain.sizes()["val"]
    assert not (vals[0] & vals[1]) and not (vals[1] & vals[2]) and not (vals[0] & vals[2])
    assert all(np.array_equal(t, plain.labels("test")) for t in tests)
    with pytest.raises(ValueError, match="data.fold=1 needs data.num_folds"):
        ClassificationDataModule(fold=1).scan()


def test_cv_refuses_what_it_cannot_run(tmp_path):
    with pytest.raises(ConfigError, match="data.num_folds=None: cv needs 2 or more folds"):
        cli.run(["cv", f"run_dir={tmp_path}"])
    with pytest.raises(ConfigError, match="data.fold=1 picks one fold"):
        cli.run(["cv", "data.num_folds=3", "data.fold=1", f"run_dir={tmp_path}"])
    with pytest.raises(ConfigError, match="task.kind='segmentation' has no folds"):
        cli.run(["cv", "recipe=fcn32s", f"run_dir={tmp_path}"])


def test_fold_action_reads_what_a_fold_left(tmp_path):
    fold = tmp_path / "3"
    assert fold_action(fold) == "fresh"
    (fold / "checkpoints").mkdir(parents=True)
    (fold / "config.yaml").write_text("seed: 1\n")
    (fold / "results.json").write_text(json.dumps({"status": "interrupted"}))
    assert fold_action(fold) == "restart"  # no last.ckpt: nothing to resume from
    (fold / "results.json").write_text(json.dumps({"status": "completed"}))
    assert fold_action(fold) == "done"


@pytest.mark.slow
def test_cv_interrupted_in_a_fold_resumes_skipping_finished_folds(fast, tmp_path, monkeypatch):
    root, folder = tmp_path / "cv", write_class_folder(tmp_path / "data", per_class=10)
    args = ["cv", "recipe=small_similar", f"data.root={folder}", "data.num_folds=2", "data.train_per_class=3",
            "finetune.head_solver=sgd",
            *fast[:-1], "trainer.max_epochs=2", f"run_dir={root}"]

    class SigtermInFold1(builders.pl.Callback):  # a deterministic fault: SIGTERM after fold 1's first epoch
        def on_train_epoch_end(self, trainer, pl_module):
            if Path(trainer.default_root_dir).name == "1" and trainer.current_epoch == 0:
                os.kill(os.getpid(), signal.SIGTERM)

    guards = builders.run_guard_callbacks
    monkeypatch.setattr(builders, "run_guard_callbacks", lambda d: [*guards(d), SigtermInFold1()])
    with pytest.raises(RunInterrupted, match=f"fold 1: .*cv resume={root.resolve()}"):
        cli.run(args)
    assert json.loads((root / "results.json").read_text())["status"] == "interrupted"
    fold0 = (root / "folds" / "0" / "results.json").read_text()
    monkeypatch.setattr(builders, "run_guard_callbacks", guards)

    results = cli.run(["cv", f"resume={root}"])
    assert (root / "folds" / "0" / "results.json").read_text() == fold0  # finished: skipped, untouched
    fold1 = json.loads((root / "folds" / "1" / "results.json").read_text())
    assert fold1["status"] == "completed" and fold1["resumes"][0]["epochs_done"] == 1 and fold1["epochs"] == 2
    for k in (0, 1):
        assert (root / "folds" / str(k) / "checkpoints" / "best.ckpt").is_file()
        assert f"fold: {k}" in (root / "folds" / str(k) / "config.yaml").read_text()

    saved = json.loads((root / "results.json").read_text())
    assert saved["status"] == "completed" and saved["command"] == "cv" and saved["num_folds"] == 2
    assert [row["fold"] for row in saved["cv"]["folds"]] == [0, 1]
    assert {"test/acc", "best/val/acc", "val/acc"} <= set(saved["cv"]["mean"]) == set(saved["cv"]["std"])
    accs = [row["test/acc"] for row in saved["cv"]["folds"]]
    assert saved["cv"]["mean"]["test/acc"] == pytest.approx(np.mean(accs))
    assert saved["cv"]["std"]["test/acc"] == pytest.approx(np.std(accs, ddof=1))
    assert "test/acc" in saved["metrics"] and len(saved["ensemble"]["members"]) == 2
    assert saved["data"]["train_per_class"] == 3 and results["metrics"] == saved["metrics"]
    rows = list(csv.DictReader((root / "cv.csv").open()))
    assert [r["fold"] for r in rows] == ["0", "1"] and rows[1]["train_size"] == "6"
    assert rows[1]["best_checkpoint"] == "folds/1/checkpoints/best.ckpt"  # relative: the cv run may move

    # The cv run directory is an ensemble for test and predict (its folds' best checkpoints).
    tested = cli.run(["test", f"ckpt_path={root}", f"run_dir={tmp_path / 'test'}"])
    assert tested["metrics"]["test/acc"] == pytest.approx(saved["metrics"]["test/acc"])
    images = tmp_path / "images"
    images.mkdir()
    from PIL import Image

    for i in range(3):
        Image.fromarray(np.full((16, 16, 3), 40 * i, np.uint8)).save(images / f"{i}.png")
    out = tmp_path / "preds.csv"
    cli.run(["predict", f"ckpt_path={root}", f"input={images}", "tta=flip", f"output={out}",
             f"run_dir={tmp_path / 'pred'}"])
    with out.open() as handle:
        assert next(csv.reader(handle)) == ["path", "label", "probability", "top_k", "error"]
