"""The run report: exact per-class scores, the files a fit/test writes, and `report run=` rebuilds."""

from __future__ import annotations

import csv
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest

from transferkit.cli import app as cli
from transferkit.errors import ConfigError
from transferkit.evaluation.reports import scores
from transferkit.evaluation.reports.run_report import OUTPUTS_FILE, read_curves, write_report

CLASSIFICATION_FILES = {"report.html", "report/test_outputs.npz", "report/confusion_matrix.png",
                        "report/confusion_matrix.csv", "report/per_class.csv", "report/predictions.csv",
                        "report/top_losses.png", "report/curves.png",
                        "report/reliability.png"}  # calibration=temperature (the default): the reliability diagrams


def read_rows(path: Path) -> list[dict]:
    with path.open(newline="") as handle:
        return list(csv.DictReader(handle))


def report_files(run_dir: Path) -> dict[str, bytes]:
    paths = [run_dir / "report.html", *sorted((run_dir / "report").iterdir())]
    return {p.relative_to(run_dir).as_posix(): p.read_bytes() for p in paths if p.is_file()}


def constructed_run(tmp_path: Path) -> Path:
    """A run directory holding only saved test outputs: 4 classes (d never occurs), 10 images.

    truth a a a a b b c c c c, predicted a a a b b b c c a a: confusion rows a [3 1 0 0],
    b [0 2 0 0], c [2 0 2 0], d [0 0 0 0].
    """
    targets = np.array([0, 0, 0, 0, 1, 1, 2, 2, 2, 2])
    preds = np.array([0, 0, 0, 1, 1, 1, 2, 2, 0, 0])
    logits = np.full((10, 4), -2.0, dtype=np.float32)
    logits[np.arange(10), preds] = np.linspace(1.0, 3.0, 10, dtype=np.float32)
    run_dir = tmp_path / "run"
    (run_dir / "report").mkdir(parents=True)
    worst = scores.rank_top_losses(scores.softmax(logits), targets, 3)
    np.savez_compressed(run_dir / "report" / OUTPUTS_FILE, task=np.array("classification"),
                        class_names=np.array(["a", "b", "c", "d"]), command_line=np.array("python -m transferkit fit"),
                        indices=np.arange(10), logits=logits, targets=targets, paths=np.array([], dtype=str),
                        top_positions=worst, top_images=np.zeros((3, 8, 8, 3), np.uint8))
    return run_dir


def test_per_class_csv_is_exact_on_a_constructed_case(tmp_path: Path) -> None:
    run_dir = constructed_run(tmp_path)
    write_report(run_dir)
    rows = {r["class"]: r for r in read_rows(run_dir / "report" / "per_class.csv")}
    F = Fraction
    expected = {  # precision = hits / predicted, recall = hits / support, F1 = 2PR / (P + R)
        "a": (F(3, 5), F(3, 4), F(2, 3), 4), "b": (F(2, 3), F(1), F(4, 5), 2),
        "c": (F(1), F(1, 2), F(2, 3), 4), "d": (F(0), F(0), F(0), 0),
        "macro avg": ((F(3, 5) + F(2, 3) + 1) / 4, (F(3, 4) + 1 + F(1, 2)) / 4, (F(2, 3) + F(4, 5) + F(2, 3)) / 4, 10),
        "weighted avg": ((4 * F(3, 5) + 2 * F(2, 3) + 4) / 10, (4 * F(3, 4) + 2 + 4 * F(1, 2)) / 10,
                         (4 * F(2, 3) + 2 * F(4, 5) + 4 * F(2, 3)) / 10, 10),
    }
    assert list(rows) == list(expected)
    for name, (precision, recall, f1, support) in expected.items():
        row = rows[name]
        assert (float(row["precision"]), float(row["recall"]), float(row["f1"]), int(row["support"])) == \
            (float(precision), float(recall), float(f1), support), name
    from sklearn.metrics import precision_recall_fscore_support

    truth, predicted = [0, 0, 0, 0, 1, 1, 2, 2, 2, 2], [0, 0, 0, 1, 1, 1, 2, 2, 0, 0]
    _, _, f1s, _ = precision_recall_fscore_support(truth, predicted, labels=[0, 1, 2, 3], zero_division=0)
    np.testing.assert_allclose([float(rows[c]["f1"]) for c in "abcd"], f1s, rtol=1e-12)
    confusion = [[int(v) for v in list(r.values())[1:]] for r in read_rows(run_dir / "report" / "confusion_matrix.csv")]
    assert confusion == [[3, 1, 0, 0], [0, 2, 0, 0], [2, 0, 2, 0], [0, 0, 0, 0]]
    # No metrics.csv and no results.json in this run: no curves, the rest is drawn all the same.
    assert not (run_dir / "report" / "curves.png").exists() and (run_dir / "report.html").is_file()


def test_top_losses_rank_wrong_by_confidence_then_least_sure_right() -> None:
    probs = np.array([[0.9, 0.1], [0.4, 0.6], [0.2, 0.8], [0.55, 0.45], [0.7, 0.3]])
    targets = np.array([0, 0, 0, 0, 1])  # wrong: 1 (0.6), 2 (0.8), 4 (0.7); right: 0 (0.9), 3 (0.55)
    assert scores.rank_top_losses(probs, targets, 4).tolist() == [2, 4, 1, 3]
    assert scores.rank_top_losses(probs, targets, 0).tolist() == []


def test_curves_take_the_last_value_of_each_epoch(tmp_path: Path) -> None:
    path = tmp_path / "metrics.csv"
    path.write_text("epoch,step,train/loss_epoch,val/loss,val/acc,test/acc\n,0,,,,\n0,9,0.9,,,\n0,9,,0.8,0.5,\n"
                    "1,19,0.7,,,\n1,19,,0.6,0.6,\n1,19,,0.5,0.7,\n1,19,,,,0.65\n")
    assert read_curves(path) == {"loss": {"train": [(0, 0.9), (1, 0.7)], "val": [(0, 0.8), (1, 0.5)]},
                                 "acc": {"val": [(0, 0.5), (1, 0.7)]}}
    assert read_curves(tmp_path / "missing.csv") == {}


@pytest.mark.slow
def test_fit_writes_the_report_and_report_rebuilds_the_same_files(image_folder, fast, tmp_path) -> None:
    results = cli.run(["fit", "recipe=small_similar", f"data.root={image_folder}", *fast])
    run_dir = Path(results["run_dir"])
    before = report_files(run_dir)
    assert set(before) == CLASSIFICATION_FILES
    predictions = read_rows(run_dir / "report" / "predictions.csv")
    assert len(predictions) == results["data"]["test_size"] > 0
    assert all(Path(r["path"]).is_file() and Path(r["path"]).parent.name == r["true"] for r in predictions)
    accuracy = np.mean([r["true"] == r["predicted"] for r in predictions])
    assert accuracy == pytest.approx(results["metrics"]["test/acc"], abs=1e-6)  # the same test pass
    page = (run_dir / "report.html").read_text()
    assert "report/confusion_matrix.png" in page and "small_similar" in page and "test/acc" in page

    for name in before:  # everything but the saved test outputs goes; the command draws it again
        if not name.endswith(OUTPUTS_FILE):
            (run_dir / name).unlink()
    rebuilt = cli.run(["report", f"run={run_dir}"])
    assert rebuilt["html"] == str(run_dir / "report.html")
    assert report_files(run_dir) == before  # same files, same bytes (CSV, PNG and HTML)


@pytest.mark.slow
def test_report_off_and_test_command_report(image_folder, fast, tmp_path) -> None:
    results = cli.run(["fit", f"data.root={image_folder}", *fast, "report.enabled=false"])
    run_dir = Path(results["run_dir"])
    assert not (run_dir / "report.html").exists() and not (run_dir / "report").exists()
    with pytest.raises(ConfigError, match=r"has no report/test_outputs.npz .* test ckpt_path="):
        cli.run(["report", f"run={run_dir}"])
    # `test` takes the checkpoint run's config (report off there) and this command line's overrides.
    tested = cli.run(["test", f"ckpt_path={results['best_checkpoint']}", f"run_dir={tmp_path / 'test'}",
                      "report.enabled=true"])
    files = set(report_files(Path(tested["run_dir"])))
    # a test run has no epochs to plot, and fits no temperature (test scores the raw outputs)
    assert files == CLASSIFICATION_FILES - {"report/curves.png", "report/reliability.png"}


@pytest.mark.slow
def test_segmentation_report_has_per_class_iou(fast) -> None:
    results = cli.run(["fit", "recipe=fcn8s", *fast, "data.embedded_length=8", "trainer.limit_train_batches=2",
                       "trainer.limit_val_batches=1", "trainer.limit_test_batches=2"])
    run_dir = Path(results["run_dir"])
    for name in ("per_class_iou.png", "per_class_iou.csv", "confusion_matrix.csv", "confusion_matrix.png"):
        assert (run_dir / "report" / name).is_file(), name
    rows = read_rows(run_dir / "report" / "per_class_iou.csv")
    assert [r["class"] for r in rows] == results["data"]["class_names"]
    for row in rows:  # the callback's pixel counts give the task's own per-class IoU
        key = f"test/iou_{row['class']}"
        assert (row["iou"] == "") == (key not in results["metrics"])
        if row["iou"]:
            assert float(row["iou"]) == pytest.approx(results["metrics"][key], abs=1e-6)
    assert sum(int(r["true_pixels"]) for r in rows) > 0
    assert "per_class_iou.png" in (run_dir / "report.html").read_text()


def test_report_run_errors_are_one_line(tmp_path: Path, capsys) -> None:
    with pytest.raises(ConfigError, match=r"run= is missing"):
        cli.run(["report"])
    with pytest.raises(ConfigError, match=r"is not a directory"):
        cli.run(["report", f"run={tmp_path / 'nowhere'}"])
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match=r"is an empty directory"):
        cli.run(["report", f"run={tmp_path / 'empty'}"])
    broken = constructed_run(tmp_path)
    (broken / "report" / OUTPUTS_FILE).write_bytes(b"not an npz")
    with pytest.raises(SystemExit) as stop:
        cli.main(["report", f"run={broken}"])
    assert stop.value.code == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err[0].startswith("transferkit: error: ConfigError: run=") and OUTPUTS_FILE in err[0]
    assert len(err) == 2 and "debug=true" in err[1]


def test_report_options_are_checked() -> None:
    from transferkit.evaluation.reports.run_report import report_options

    assert report_options({}) == {"enabled": True, "top_losses": 16}
    with pytest.raises(ConfigError, match="report.top_losses=-1"):
        report_options({"top_losses": -1})
    with pytest.raises(ConfigError, match="report.enabled='yes'"):
        report_options({"enabled": "yes"})


def test_report_html_opens_in_chromium_without_console_errors(tmp_path: Path) -> None:
    """Every picture it links loads and nothing on the page errs (headless Chromium; skipped where absent)."""
    from chromium import console_messages

    run_dir = constructed_run(tmp_path)
    problems, shown = console_messages(write_report(run_dir))
    assert problems == [] and shown >= 2
