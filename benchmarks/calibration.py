"""Calibration (issue 25 item 1): does temperature scaling make full fine-tunes' probabilities honest?

On real photo/glyph folders (benchmarks/photo_sets.py, used read-only) a full fine-tune of the house
backbone is fitted per seed with the shipped defaults (`calibration=temperature`):

    python -m transferkit fit recipe=small_similar data.root=<folder> model.weights=charnet finetune=full seed=<s>

and results.json's `test/ece_uncalibrated`, `test/ece`, `test/nll_uncalibrated`, `test/nll` with their
bootstrap intervals (1000 resamples of the test images, fixed seed; paired for the drops) are collected.
The method was fixed before this ran (one scalar, L-BFGS on validation NLL); nothing here tuned it.
Then `predict` on each run's test folder, with and without calibration, shows what the CSV's
`probability` column says against how often the prediction is right.

    python benchmarks/calibration.py [--sets textures-large symbols] [--seeds 0 1 2] [--workdir DIR]

Writes benchmarks/results/calibration.json and calibration.md.
"""

from __future__ import annotations

import argparse
import csv
import datetime
import json
import logging
import os
import platform
import statistics
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import photo_sets  # noqa: E402 - the folders' builder, beside this file

log = logging.getLogger("calibration")
FIT = ["recipe=small_similar", "model.weights=charnet", "finetune=full"]
KEYS = ("test/ece_uncalibrated", "test/ece", "test/nll_uncalibrated", "test/nll")


def predicted_confidence(csv_path: Path) -> dict:
    """Mean `probability` of predict's CSV against its accuracy (the folder name is the true class)."""
    with csv_path.open(newline="") as handle:
        rows = [r for r in csv.DictReader(handle) if not r.get("error")]
    right = [Path(r["path"]).parent.name == r["label"] for r in rows]
    return {"images": len(rows), "mean_probability": statistics.fmean(float(r["probability"]) for r in rows),
            "accuracy": statistics.fmean(right)}


def one_run(cli, name: str, root: Path, seed: int, workdir: Path) -> dict:
    run_dir = workdir / "runs" / f"{name}-{seed}"
    start = time.perf_counter()
    saved = run_dir / "results.json"
    if saved.is_file() and json.loads(saved.read_text()).get("status") == "completed":  # fitted by an earlier call
        results = json.loads(saved.read_text())
    else:
        results = cli.run(["fit", *FIT, f"data.root={root}", f"seed={seed}", f"run_dir={run_dir}"])
    seconds = results.get("wall_seconds", time.perf_counter() - start)
    metrics, calibration = results["metrics"], results["calibration"]
    ci = calibration["ci95"]
    row = {"set": name, "seed": seed, "run_dir": str(run_dir), "fit_seconds": round(seconds, 1),
           "test_acc": metrics["test/acc"], "temperature": calibration["temperature"],
           "val_images": calibration["val_images"], "test_images": calibration["test_images"],
           **{k: metrics[k] for k in KEYS}, "ci95": ci}
    row["ece_drop_fraction"] = 1 - metrics["test/ece"] / metrics["test/ece_uncalibrated"]
    # the done-criterion, per run: ECE down >= 30 % and both drops beyond their bootstrap interval (the paired
    # interval of uncalibrated minus calibrated lies above 0); `disjoint` is the stricter reading (the two
    # ECE intervals do not overlap)
    row["ece_drop_beyond_ci"] = ci["test/ece_drop"][0] > 0
    row["nll_drop_beyond_ci"] = ci["test/nll_drop"][0] > 0
    row["ece_intervals_disjoint"] = ci["test/ece"][1] < ci["test/ece_uncalibrated"][0]
    row["nll_intervals_disjoint"] = ci["test/nll"][1] < ci["test/nll_uncalibrated"][0]
    row["meets"] = row["ece_drop_fraction"] >= 0.30 and row["ece_drop_beyond_ci"] and row["nll_drop_beyond_ci"]
    for calibration_mode in ("none", "temperature"):
        out = workdir / "predict" / f"{name}-{seed}-{calibration_mode}.csv"
        cli.run(["predict", f"ckpt_path={run_dir}/checkpoints/best.ckpt", f"input={root}/test", f"output={out}",
                 f"calibration={calibration_mode}", f"run_dir={workdir / 'predict' / f'{name}-{seed}-{calibration_mode}'}"])
        row[f"predict_{calibration_mode}"] = predicted_confidence(out)
    log.info("%s seed %d: T=%.3f ECE %.4f -> %.4f (%.0f %% down), NLL %.4f -> %.4f, meets=%s", name, seed,
             row["temperature"], row["test/ece_uncalibrated"], row["test/ece"], 100 * row["ece_drop_fraction"],
             row["test/nll_uncalibrated"], row["test/nll"], row["meets"])
    return row


def environment() -> dict:
    import torch
    import torchmetrics

    return {"date": datetime.date.today().isoformat(), "machine": platform.machine(), "cpus": os.cpu_count(),
            "python": platform.python_version(), "torch": torch.__version__, "torchmetrics": torchmetrics.__version__,
            "load_avg_start": os.getloadavg()[0]}


def mean_std(rows: list[dict], key: str) -> str:
    values = [r[key] for r in rows]
    return f"{statistics.fmean(values):.4f} ± {statistics.stdev(values) if len(values) > 1 else 0.0:.4f}"


def markdown(report: dict) -> str:
    lines = ["### Temperature scaling on full fine-tunes (charnet, `recipe=small_similar finetune=full`)", "",
             "| set | seed | test acc | T | test ECE before → after [95 % CI of the drop] | ECE down | "
             "test NLL before → after [95 % CI of the drop] | predict: mean probability / accuracy (none → temperature) |",
             "|---|---|---|---|---|---|---|---|"]
    for r in report["runs"]:
        ci = r["ci95"]
        lines.append(
            f"| {r['set']} | {r['seed']} | {r['test_acc']:.3f} | {r['temperature']:.2f} | "
            f"{r['test/ece_uncalibrated']:.4f} → {r['test/ece']:.4f} [{ci['test/ece_drop'][0]:.4f}, {ci['test/ece_drop'][1]:.4f}] | "
            f"{100 * r['ece_drop_fraction']:.0f} % | {r['test/nll_uncalibrated']:.4f} → {r['test/nll']:.4f} "
            f"[{ci['test/nll_drop'][0]:.4f}, {ci['test/nll_drop'][1]:.4f}] | "
            f"{r['predict_none']['mean_probability']:.3f} → {r['predict_temperature']['mean_probability']:.3f} / "
            f"{r['predict_temperature']['accuracy']:.3f} |")
    for name in report["sets"]:
        rows = [r for r in report["runs"] if r["set"] == name]
        if not rows:
            continue
        lines.append(f"| {name} | mean ± std ({len(rows)} seed{'s' if len(rows) > 1 else ''}) | {mean_std(rows, 'test_acc')} | {mean_std(rows, 'temperature')} | "
                     f"{mean_std(rows, 'test/ece_uncalibrated')} → {mean_std(rows, 'test/ece')} | "
                     f"{100 * statistics.fmean(r['ece_drop_fraction'] for r in rows):.0f} % | "
                     f"{mean_std(rows, 'test/nll_uncalibrated')} → {mean_std(rows, 'test/nll')} | |")
    met = sum(r["meets"] for r in report["runs"])
    lines += ["", f"Runs meeting the criterion (ECE down ≥ 30 %, paired bootstrap intervals of both drops above 0): "
                  f"{met} of {len(report['runs'])}. ECE: 15 bins, L1 (torchmetrics); intervals: {report['draws']} "
                  "resamples of the test images, seed 0."]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sets", nargs="+", default=["textures-large", "symbols"])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/transferkit-calibration"))
    parser.add_argument("--out", type=Path, default=HERE / "results" / "calibration")
    parser.add_argument("--keep", action="store_true", help="keep the runs already in the JSON; run the others")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    from transferkit.cli import app as cli
    from transferkit.evaluation.calibration import DRAWS

    report = {"environment": environment(), "command": " ".join(["python -m transferkit fit", *FIT,
                                                                  "data.root=<set> seed=<seed>"]),
              "sets": args.sets, "seeds": args.seeds, "draws": DRAWS, "runs": []}
    if args.keep and args.out.with_suffix(".json").is_file():
        before = json.loads(args.out.with_suffix(".json").read_text())
        report["runs"] = before["runs"]
        report["sets"] = list(dict.fromkeys([*before["sets"], *args.sets]))
        report["environments"] = [*before.get("environments", [before["environment"]]), report["environment"]]
    done = {(r["set"], r["seed"]) for r in report["runs"]}
    for name in args.sets:
        root = photo_sets.build_set(name, args.workdir / "sets")
        for seed in args.seeds:
            if (name, seed) not in done:
                report["runs"].append(one_run(cli, name, root, seed, args.workdir))
            args.out.with_suffix(".json").write_text(json.dumps(report, indent=1))  # partial results survive
    args.out.with_suffix(".md").write_text(markdown(report))
    log.info("%s", markdown(report))


if __name__ == "__main__":
    main()
