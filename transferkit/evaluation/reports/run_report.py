"""The report in every run directory: `report.html` and, under `report/`, the files it links.

At the end of `fit`/`test`, `save_test_outputs` stores what the test pass gave (collected by
`reports.test_outputs.TestOutputsCallback`, no second pass) in `report/test_outputs.npz`, with the
top-loss images as the model saw them. `write_report` then draws everything from the run
directory's own files (that npz, results.json, config.yaml, metrics.csv), which is also all that
`python -m transferkit report run=<run directory>` reads: a rebuild writes the same files.
"""

from __future__ import annotations

import csv
import json
import logging
import shlex
import sys
import time
import zipfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from transferkit.data.device_decode import decoded_on_cpu
from transferkit.data.transforms import PER_IMAGE_STANDARDISED
from transferkit.errors import ConfigError
from transferkit.evaluation.calibration import reliability_bins
from transferkit.evaluation.reports import figures, scores
from transferkit.evaluation.reports.augment_grid import tensor_to_display
from transferkit.evaluation.reports.html_page import render_page
from transferkit.evaluation.reports.multilabel_report import write_multilabel
from transferkit.evaluation.reports.test_outputs import TestOutputs, TestOutputsCallback

log = logging.getLogger("transferkit")

REPORT_DIR = "report"
OUTPUTS_FILE = "test_outputs.npz"
REBUILD_EXAMPLE = "python -m transferkit report run=outputs/<date>/<time>"
TOP_LOSSES = 16
# metrics.csv column -> (panel, line) of curves.png
CURVE_COLUMNS = {"train/loss_epoch": ("loss", "train"), "train/loss": ("loss", "train"), "val/loss": ("loss", "val"),
                 "train/acc_epoch": ("acc", "train"), "train/acc": ("acc", "train"), "val/acc": ("acc", "val"),
                 "val/miou": ("miou", "val")}


def report_options(given: dict | None) -> dict:
    """`report.enabled` (default true) and `report.top_losses` (images in top_losses.png), checked."""
    options = {"enabled": True, "top_losses": TOP_LOSSES, **dict(given or {})}
    if options["enabled"] not in (True, False):
        raise ConfigError(f"report.enabled={options['enabled']!r} must be true or false.")
    if not isinstance(options["top_losses"], int) or options["top_losses"] < 0:
        raise ConfigError(f"report.top_losses={options['top_losses']!r} must be a whole number >= 0.")
    return options


def command_line(command: str, recipe: str | None) -> str:
    """The command that started this process, when it was `python -m transferkit ...`."""
    argv0 = Path(sys.argv[0]) if sys.argv and sys.argv[0] else Path()
    if argv0.name == "__main__.py" and argv0.parent.name == "transferkit" and sys.argv[1:2] == [command]:
        return shlex.join(["python", "-m", "transferkit", *sys.argv[1:]])
    return shlex.join(["python", "-m", "transferkit", command, *([f"recipe={recipe}"] if recipe else [])])


def finish_run_report(report: dict, trainer, datamodule, run_dir: Path, results: dict) -> Path | None:
    """Save the test outputs and write the report (rank 0) with the `report` options. A report that fails
    only warns: the run itself finished and its results are written."""
    options = report_options(report)
    callback = next((c for c in trainer.callbacks if isinstance(c, TestOutputsCallback)), None)
    if not options["enabled"] or callback is None or callback.outputs is None:
        return None
    start = time.perf_counter()
    try:
        command = command_line(str(results.get("command", "fit")), results.get("recipe"))
        save_test_outputs(callback.outputs, datamodule, run_dir, options["top_losses"], command)
        html = write_report(run_dir)
    except Exception as err:  # noqa: BLE001 - the run succeeded; a drawing problem must not fail it
        log.warning("Report not written (%s: %s); rebuild it with: python -m transferkit report run=%s",
                    type(err).__name__, err, shlex.quote(str(run_dir)))
        return None
    log.info("Report: %s (%.1f s)", html, time.perf_counter() - start)
    return html


# -- rebuilding a run's report (the `report` command) ---------------------------------------------
def check_run(value) -> Path:
    """The run directory named by `run=`, or a ConfigError saying what is wrong with it."""
    if not value:
        raise ConfigError(f"run= is missing: give the run directory whose report to rebuild, e.g. {REBUILD_EXAMPLE} "
                          "(run_dir= is where a new run writes).")
    path = Path(str(value)).expanduser()
    if not path.is_dir():
        raise ConfigError(f"run={str(value)!r} is not a directory; give a run directory written by fit or "
                          f"test, e.g. {REBUILD_EXAMPLE}.")
    if not any(path.iterdir()):
        raise ConfigError(f"run={str(value)!r} is an empty directory; give a run directory written by fit or "
                          f"test, e.g. {REBUILD_EXAMPLE}.")
    if not (path / REPORT_DIR / OUTPUTS_FILE).is_file():
        raise ConfigError(f"run={str(value)!r} has no {REPORT_DIR}/{OUTPUTS_FILE} (fit and test save it with "
                          "report.enabled=true); evaluate its checkpoint again with python -m transferkit "
                          "test ckpt_path=<run>/checkpoints/best.ckpt, which writes a run with a report.")
    return path.resolve()


def rebuild_report(run) -> dict:
    """Rewrite report.html and report/ of the run directory `run` from its saved files (no re-evaluation)."""
    path = check_run(run)
    try:
        html = write_report(path)
    except (OSError, ValueError, KeyError, zipfile.BadZipFile) as err:
        raise ConfigError(f"run={str(run)!r}: cannot rebuild its report from {REPORT_DIR}/{OUTPUTS_FILE} "
                          f"({type(err).__name__}: {err}).") from err
    files = sorted(str(p.relative_to(path)) for p in (path / REPORT_DIR).iterdir())
    return {"command": "report", "run_dir": str(path), "html": str(html), "files": ["report.html", *files]}


# -- saving the test pass -----------------------------------------------------------------------
def tested_dataset(datamodule):
    """The dataset the test pass read (the test split, or val where there is no test split)."""
    inner = getattr(datamodule, "datamodule", datamodule)  # under a feature cache, the image data
    return inner, decoded_on_cpu(inner.test_dataloader().dataset, inner)  # data.decode=gpu: file bytes


def source_paths(dataset) -> list[str] | None:
    """File paths of a dataset built on files (`FileSource.items`), else None (generated data)."""
    source = getattr(dataset, "source", None)
    while source is not None and not hasattr(source, "items"):
        source = getattr(source, "source", None)
    return None if source is None else [str(path) for path, _ in source.items]


def display_images(datamodule, dataset, indices: Sequence[int]) -> np.ndarray:
    """The test images at `indices` as the model saw them, de-normalised to ``uint8 H x W x 3``."""
    per_image = getattr(datamodule, "augment", None) in PER_IMAGE_STANDARDISED
    images = [tensor_to_display(dataset[int(i)][0], datamodule.mean, datamodule.std, per_image) for i in indices]
    return np.stack(images) if images else np.zeros((0, 1, 1, 3), np.uint8)


def save_test_outputs(outputs: TestOutputs, datamodule, run_dir: Path, top_losses: int, command: str) -> Path:
    folder = Path(run_dir) / REPORT_DIR
    folder.mkdir(parents=True, exist_ok=True)
    names = np.array([str(c) for c in datamodule.class_names])
    arrays = {"task": np.array(outputs.task), "class_names": names, "command_line": np.array(command)}
    if outputs.task == "segmentation":
        arrays["confusion"] = outputs.confusion
    elif outputs.task == "multilabel":  # no single true class to rank losses by: no top-loss images
        paths = source_paths(tested_dataset(datamodule)[1])
        arrays.update(indices=outputs.indices, logits=outputs.logits, targets=outputs.targets,
                      paths=np.array([paths[i] for i in outputs.indices] if paths else [], dtype=str))
    else:
        inner, dataset = tested_dataset(datamodule)
        paths = source_paths(dataset)
        worst = scores.rank_top_losses(scores.softmax(outputs.logits), outputs.targets, top_losses)
        arrays.update(indices=outputs.indices, logits=outputs.logits, targets=outputs.targets,
                      paths=np.array([paths[i] for i in outputs.indices] if paths else [], dtype=str),
                      top_positions=worst,
                      top_images=display_images(inner, dataset, outputs.indices[worst]))
    path = folder / OUTPUTS_FILE
    np.savez_compressed(path, **arrays)
    return path


# -- writing the report --------------------------------------------------------------------------
def load_test_outputs(run_dir: Path) -> dict:
    with np.load(Path(run_dir) / REPORT_DIR / OUTPUTS_FILE, allow_pickle=False) as data:
        return {key: data[key] for key in data.files}


def write_csv(path: Path, header: Sequence[str], rows: Sequence[Sequence]) -> Path:
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(header)
        writer.writerows(rows)
    return path


def read_curves(metrics_csv: Path) -> dict[str, dict[str, list[tuple[int, float]]]]:
    """Per-epoch values of the loss and the main metric from Lightning's metrics.csv (last value of an
    epoch wins, e.g. after a resume)."""
    if not metrics_csv.is_file():
        return {}
    per_epoch: dict[tuple[str, str], dict[int, float]] = {}
    with metrics_csv.open(newline="") as handle:
        for row in csv.DictReader(handle):
            if not row.get("epoch"):
                continue
            for column, key in CURVE_COLUMNS.items():
                if row.get(column):
                    per_epoch.setdefault(key, {})[int(float(row["epoch"]))] = float(row[column])
    curves: dict[str, dict[str, list[tuple[int, float]]]] = {}
    for (panel, stage), values in sorted(per_epoch.items(), key=lambda kv: (kv[0][0] != "loss", kv[0])):
        curves.setdefault(panel, {})[stage] = sorted(values.items())
    return curves


def write_report(run_dir: Path) -> Path:
    """Write `report/*` and `report.html` from the run directory's own files; returns report.html."""
    run_dir = Path(run_dir)
    folder = run_dir / REPORT_DIR
    saved = load_test_outputs(run_dir)
    results = json.loads((run_dir / "results.json").read_text()) if (run_dir / "results.json").is_file() else {}
    names = [str(n) for n in saved["class_names"]]
    task = str(saved["task"])
    if task == "multilabel":
        files, tables = write_multilabel(folder, saved, names, results)
    else:
        write = write_segmentation if task == "segmentation" else write_classification
        files, tables = write(folder, saved, names)
    if task == "classification" and (results.get("calibration") or {}).get("temperature"):
        files["reliability"] = reliability_png(folder, saved, results)
    curves = read_curves(run_dir / "metrics.csv")
    if curves:
        files["curves"] = figures.curves_figure(curves, folder / "curves.png")
    html = run_dir / "report.html"
    html.write_text(render_page(run_dir, results, str(saved["command_line"]), task, files, tables))
    return html


def write_classification(folder: Path, saved: dict, names: list[str]) -> tuple[dict[str, Path], dict[str, list]]:
    logits, targets, indices = saved["logits"], saved["targets"], saved["indices"]
    probs = scores.softmax(logits)
    preds = probs.argmax(axis=1)
    confmat = scores.confusion_matrix(targets, preds, len(names))
    rows = scores.per_class_rows(confmat, names)
    wrong = int((preds != targets).sum())
    title = f"Test confusion matrix ({len(targets) - wrong}/{len(targets)} right)"
    written = {
        "confusion_csv": write_csv(folder / "confusion_matrix.csv", ["true\\predicted", *names],
                                   [[name, *map(int, confmat[k])] for k, name in enumerate(names)]),
        "confusion_png": figures.confusion_figure(confmat, names, folder / "confusion_matrix.png", title),
        "per_class_csv": write_csv(folder / "per_class.csv", ["class", "precision", "recall", "f1", "support"],
                                   [[r["class"], r["precision"], r["recall"], r["f1"], r["support"]] for r in rows]),
    }
    paths = [str(p) for p in saved["paths"]] if len(saved["paths"]) else [""] * len(indices)
    loss = -np.log(np.clip(probs[np.arange(len(targets)), targets], 1e-12, None))
    written["predictions_csv"] = write_csv(
        folder / "predictions.csv", ["index", "path", "true", "predicted", "probability", "true_probability", "loss"],
        [[int(indices[k]), paths[k], names[targets[k]], names[preds[k]], f"{probs[k, preds[k]]:.6f}",
          f"{probs[k, targets[k]]:.6f}", f"{loss[k]:.6f}"] for k in range(len(targets))])
    top = saved["top_positions"]
    captions = [f"true {names[targets[k]]}\npred {names[preds[k]]} ({probs[k, preds[k]]:.2f})" for k in top]
    shown_wrong = [bool(preds[k] != targets[k]) for k in top]
    title = (f"Top losses: {wrong} of {len(targets)} test images wrong; "
             f"{sum(shown_wrong)} most confidently wrong shown" + (" (then the least sure right ones)"
                                                                  if len(top) > sum(shown_wrong) else ""))
    written["top_losses"] = figures.top_losses_figure(saved["top_images"], captions, shown_wrong,
                                                      folder / "top_losses.png", title)
    top_rows = [{"index": int(indices[k]), "path": paths[k], "true": names[targets[k]],
                 "predicted": names[preds[k]], "probability": float(probs[k, preds[k]])} for k in top]
    return written, {"per_class": rows, "top_losses": top_rows, "recall": scores.recall_rows(confmat, names)}


def reliability_png(folder: Path, saved: dict, results: dict) -> Path:
    """The test split's reliability diagrams, raw and at the fitted temperature (`calibration=temperature`)."""
    calibration, metrics = results["calibration"], results.get("metrics") or {}
    temperature = float(calibration["temperature"])
    panels = [(f"uncalibrated (test ECE {metrics.get('test/ece_uncalibrated', float('nan')):.3f})", None),
              (f"temperature {temperature:.2f} (test ECE {metrics.get('test/ece', float('nan')):.3f})", temperature)]
    return figures.reliability_figure([(title, reliability_bins(saved["logits"], saved["targets"], t))
                                       for title, t in panels], folder / "reliability.png")


def write_segmentation(folder: Path, saved: dict, names: list[str]) -> tuple[dict[str, Path], dict[str, list]]:
    confmat = saved["confusion"]
    rows = scores.iou_rows(confmat, names)
    present = [r["iou"] for r in rows if r["iou"] is not None]
    miou = sum(present) / len(present) if present else 0.0
    written = {
        "confusion_csv": write_csv(folder / "confusion_matrix.csv", ["true\\predicted", *names],
                                   [[name, *map(int, confmat[k])] for k, name in enumerate(names)]),
        "confusion_png": figures.confusion_figure(confmat, names, folder / "confusion_matrix.png",
                                                  "Test pixel confusion matrix"),
        "iou_csv": write_csv(folder / "per_class_iou.csv", ["class", "iou", "true_pixels", "predicted_pixels"],
                             [[r["class"], "" if r["iou"] is None else r["iou"], r["true_pixels"],
                               r["predicted_pixels"]] for r in rows]),
        "iou_png": figures.iou_figure(rows, folder / "per_class_iou.png", f"Per-class IoU (test mIoU {miou:.3f})"),
    }
    return written, {"per_class_iou": rows}
