"""Long-tailed classes: planning's defaults from the train counts, balanced accuracy, logit adjustment and the
report's per-class recall."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import write_class_folder
from transferkit.cli import app as cli
from transferkit.errors import ConfigError
from transferkit.evaluation.reports.scores import recall_rows
from transferkit.planning.balance import check_monitor, choose_imbalance, imbalance_ratio
from transferkit.planning.spec import RunSpec
from transferkit.tasks.base import monitor_mode
from transferkit.tasks.classification import ClassificationTask, build_metrics

NAMES = ["common", "rare", "mid"]


def test_imbalance_ratio_ignores_empty_classes() -> None:
    assert imbalance_ratio(np.array([120, 3, 0, 40])) == 40.0
    assert imbalance_ratio(np.array([5, 0])) == 1.0


@pytest.mark.parametrize(("counts", "balance", "monitor", "expected"), [
    ([110, 10, 50], "auto", None, ("weights", "val/balanced_acc", True)),    # 11:1 > 10
    ([100, 10, 50], "auto", None, ("none", "val/acc", False)),              # 10:1 is not above 10
    ([110, 10, 50], "none", None, ("none", "val/balanced_acc", True)),      # data.balance=none wins
    ([110, 10, 50], "sampler", "val/acc", ("sampler", "val/acc", True)),    # checkpoint.monitor wins
    ([50, 40, 45], "weights", None, ("weights", "val/acc", False)),
])
def test_choose_imbalance(counts, balance, monitor, expected) -> None:
    decided = choose_imbalance(np.array(counts), NAMES, balance, monitor)
    assert (decided.balance, decided.monitor, decided.long_tailed) == expected
    if decided.long_tailed:
        assert (decided.largest, decided.smallest) == ("common", "rare")


def test_monitor_checked_and_its_mode() -> None:
    check_monitor("val/balanced_acc", "classification")
    with pytest.raises(ConfigError, match="checkpoint.monitor='val/bacc'"):
        check_monitor("val/bacc", "classification")
    assert monitor_mode("val/loss") == "min" and monitor_mode("val/balanced_acc") == "max"


def test_balanced_acc_metric_is_mean_recall() -> None:
    metrics = build_metrics(3, top_k=5)
    target = torch.tensor([0, 0, 0, 0, 1, 2])
    logits = torch.nn.functional.one_hot(torch.tensor([0, 0, 0, 0, 0, 2]), 3).float()
    values = metrics(logits, target)
    assert float(values["acc"]) == pytest.approx(5 / 6)
    assert float(values["balanced_acc"]) == pytest.approx((1 + 0 + 1) / 3)


def test_recall_rows_lowest_first_and_never_predicted() -> None:
    confmat = np.array([[8, 0, 2], [3, 0, 0], [1, 0, 3]])
    rows = recall_rows(confmat, NAMES)
    assert [r["class"] for r in rows] == ["rare", "mid", "common"]
    assert [r["never_predicted"] for r in rows] == [True, False, False]
    assert rows[0]["support"] == 3 and rows[0]["predicted"] == 0


def test_logit_adjust_subtracts_log_priors_only_in_eval_mode() -> None:
    task = ClassificationTask(2, model={"backbone": "test_resnet"}, finetune={"strategy": "full"},
                              logit_adjust=True, class_priors=[0.9, 0.1])
    features = torch.randn(3, task.encoder.num_features)
    raw = task.head(features)
    task.train()
    assert torch.equal(task(features), raw)
    task.eval()
    assert torch.allclose(task(features), raw - torch.log(torch.tensor([0.9, 0.1])))
    with pytest.raises(ValueError, match="class_priors"):
        ClassificationTask(2, model={"backbone": "test_resnet"}, finetune={"strategy": "full"}, logit_adjust=True)


def long_tailed_folder(root: Path) -> Path:
    """train 24 : 2 (12:1), val and test 6 per class."""
    write_class_folder(root, classes=("cat", "dog"), per_class=24, splits=("train",))
    for path in sorted((root / "train" / "dog").iterdir())[2:]:
        path.unlink()
    write_class_folder(root, classes=("cat", "dog"), per_class=6, splits=("val", "test"), seed=1)
    return root


@pytest.mark.slow
def test_long_tailed_fit_defaults_and_overrides(tmp_path, fast) -> None:
    root = long_tailed_folder(tmp_path / "lt")
    args = ["recipe=small_similar", f"data.root={root}", *[a for a in fast if not a.startswith("run_dir")]]
    results = cli.run(["fit", *args, f"run_dir={tmp_path / 'auto'}", "logit_adjust=true"])
    assert results["plan"]["imbalance"]["long_tailed"] and results["plan"]["imbalance"]["ratio"] == 12.0
    assert results["monitor"]["metric"] == "val/balanced_acc"
    assert "best/val/balanced_acc" in results["metrics"] and "test/balanced_acc" in results["metrics"]
    assert results["headline"][0] == "test/balanced_acc"
    assert results["linear_probe"]["class_weighted"]  # the L-BFGS solve is class-weighted
    run_dir = Path(results["run_dir"])
    assert "Recall per class (test), lowest first" in (run_dir / "report.html").read_text()
    spec = json.loads((run_dir / "spec.json").read_text())
    assert spec["data"]["options"]["balance"] == "weights" and spec["callbacks"]["monitor"] == "val/balanced_acc"
    assert RunSpec.from_dict(spec).imbalance["balance"] == "weights"
    task = ClassificationTask.load_from_checkpoint(results["best_checkpoint"])
    assert task.monitor == "val/balanced_acc" and task.logit_adjust
    assert torch.allclose(task.log_priors.exp(), torch.tensor([24 / 26, 2 / 26]))

    plain = cli.run(["fit", *args, f"run_dir={tmp_path / 'plain'}", "data.balance=none", "checkpoint.monitor=val/acc"])
    assert plain["monitor"]["metric"] == "val/acc" and plain["headline"][0] == "test/balanced_acc"
    assert plain["plan"]["imbalance"]["balance"] == "none" and not plain["linear_probe"]["class_weighted"]
    assert not hasattr(ClassificationTask.load_from_checkpoint(plain["best_checkpoint"]), "log_priors")


@pytest.mark.slow
def test_balanced_folder_keeps_accuracy(tmp_path, fast, image_folder) -> None:
    results = cli.run(["fit", "recipe=small_similar", f"data.root={image_folder}", *fast])
    assert results["monitor"]["metric"] == "val/acc" and results["headline"] is None
    assert not results["plan"]["imbalance"]["long_tailed"] and results["plan"]["imbalance"]["balance"] == "none"


@pytest.mark.slow
def test_unknown_monitor_named(tmp_path, fast, image_folder) -> None:
    with pytest.raises(ConfigError, match="checkpoint.monitor='val/accuracy'"):
        cli.run(["fit", f"data.root={image_folder}", *fast, "checkpoint.monitor=val/accuracy"])


@pytest.mark.parametrize("command", ["test", "predict", "export"])
def test_logit_adjust_is_a_fit_option(command, tmp_path) -> None:
    with pytest.raises(ConfigError, match=f"logit_adjust=True is a fit option.*{command} applies them"):
        cli.run([command, f"ckpt_path={tmp_path / 'best.ckpt'}", f"input={tmp_path}", "logit_adjust=true"])


def test_race_needs_a_monitor_it_can_score(tmp_path, fast, image_folder) -> None:
    with pytest.raises(ConfigError, match="checkpoint.monitor='val/f1': finetune=auto's race scores"):
        cli.run(["fit", f"data.root={image_folder}", *fast, "finetune=auto", "checkpoint.monitor=val/f1"])
