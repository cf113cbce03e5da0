"""`audit` on real images with planted faults, and its cost beside `fit`.

Quality: scikit-learn's 1797 handwritten digits as a train/val/test folder (benchmarks/audit_faults.py)
with 90 leaked copies (exact, same pixels as BMP, resized, re-encoded, cropped 3-5 %, brightened),
5 % flipped labels and 30 out-of-domain images (photo crops, a blank, a noise image); audited with
`model.weights=charnet` (offline). Per seed: leak recall and false cross-split pairs (as a share of
the images), the flipped labels in the top 5 % of label_issues.csv and the ranking's average
precision, the out-of-domain images in the top 5 % of outliers.csv, and the out-of-sample accuracy
(label_issues.csv's `suggested` against the true digit). Design seeds (0, 100) set the thresholds;
the report seeds ran once after that.

Cost: `python -m transferkit fit` (its default run) and `python -m transferkit audit` on the embedded
digits, each a whole process, paired A B A B.

    python benchmarks/audit.py [--seeds 1 2 3] [--pairs 5] [--skip-timing] [--smoke]

Writes benchmarks/results/audit.json and audit.md.
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
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402

from audit_faults import build_folder  # noqa: E402

log = logging.getLogger("audit_benchmark")
RESULTS = Path(__file__).resolve().parent / "results"
DESIGN_SEEDS = (0, 100)
AUDIT = ["model.weights=charnet", "trainer.accelerator=cpu"]


def read(path: Path) -> list[dict]:
    with path.open(newline="") as handle:
        return list(csv.DictReader(handle))


def top_share(rows: list[dict], wanted: set[str], fraction: float = 0.05) -> tuple[int, int]:
    top = int(np.ceil(fraction * len(rows)))
    return sum(r["path"] in wanted for r in rows[:top]), top


def average_precision(hits: np.ndarray) -> float:
    precision = np.cumsum(hits) / np.arange(1, len(hits) + 1)
    return float((precision * hits).sum() / max(hits.sum(), 1))


def score(run_dir: Path, truth: dict) -> dict:
    """The benchmark's numbers for one audited folder."""
    pairs, labels, outliers = (read(run_dir / f"{name}.csv") for name in ("duplicates", "label_issues", "outliers"))
    planted = {frozenset((leak["a"], leak["b"])): leak["kind"] for leak in truth["leaks"]}
    found = {frozenset((r["path_a"], r["path_b"])): r for r in pairs}
    by_kind: dict[str, list[bool]] = {}
    for pair, kind in planted.items():
        by_kind.setdefault(kind, []).append(pair in found)
    false = [r for r in pairs if r["split_a"] != r["split_b"] and frozenset((r["path_a"], r["path_b"])) not in planted]
    exact_kept = [found[p]["kind"] == "exact" for p, k in planted.items() if k.startswith("exact") and p in found]
    flipped, odd = set(truth["flipped"]), set(truth["ood"])
    in_top, top = top_share(labels, flipped)
    ood_top, ood_cut = top_share(outliers, odd)
    true_labels = truth["true_labels"]
    suggested = [r["suggested"] == str(true_labels[r["path"]]) for r in labels if r["path"] in true_labels]
    results = json.loads((run_dir / "results.json").read_text())
    return {"images": truth["images"],
            "leak_recall": sum(sum(v) for v in by_kind.values()) / len(planted),
            "leak_recall_by_kind": {k: f"{sum(v)}/{len(v)}" for k, v in sorted(by_kind.items())},
            "exact_reported_exact": f"{sum(exact_kept)}/{len(exact_kept)}",
            "false_cross_split_pairs": len(false), "false_pair_share": len(false) / truth["images"],
            "flipped": len(flipped), "flipped_in_top_5pct": in_top, "top_5pct_rows": top,
            "flipped_recall_top_5pct": in_top / len(flipped),
            "label_average_precision": average_precision(np.array([r["path"] in flipped for r in labels])),
            "ood": len(odd), "ood_in_top_5pct": ood_top, "ood_top_rows": ood_cut, "ood_recall_top_5pct": ood_top / len(odd),
            "out_of_sample_accuracy_true_labels": float(np.mean(suggested)),
            "out_of_sample_accuracy_given_labels": results["labels"]["accuracy"],
            "audit_wall_seconds": results["wall_seconds"], "counts": results["counts"],
            "verified_pairs": results["duplicates"]["verified"]}


def quality(seeds: list[int], workdir: Path, extra: list[str]) -> list[dict]:
    from transferkit.cli import app as cli

    rows = []
    for seed in seeds:
        root = workdir / f"digits-{seed}"
        truth = build_folder(root, seed)
        run_dir = workdir / f"audit-{seed}"
        start = time.perf_counter()
        cli.run(["audit", f"data.root={root}", f"run_dir={run_dir}", *AUDIT, *extra])
        row = {"seed": seed, "design": seed in DESIGN_SEEDS, **score(run_dir, truth),
               "process_seconds": round(time.perf_counter() - start, 1)}
        rows.append(row)
        log.info("seed %d: %s", seed, {k: v for k, v in row.items() if k != "counts"})
    return rows


def timed(command: list[str], run_dir: Path) -> float:
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "transferkit", *command, f"run_dir={run_dir}"],
                          capture_output=True, text=True, env={**os.environ, "NO_ALBUMENTATIONS_UPDATE": "1"})
    if done.returncode:
        raise RuntimeError(done.stderr[-2000:])
    return time.perf_counter() - start


def cost(pairs: int, workdir: Path) -> dict:
    """fit's default run and audit on the embedded digits, whole processes, A B A B."""
    arms = {"fit": ["fit", "trainer.accelerator=cpu"], "audit": ["audit", "trainer.accelerator=cpu"]}
    timed(arms["fit"], workdir / "warmup")  # file caches warm for both arms
    seconds: dict[str, list[float]] = {arm: [] for arm in arms}
    for k in range(pairs):
        for arm, command in arms.items():
            seconds[arm].append(round(timed(command, workdir / f"{arm}-{k}"), 2))
            log.info("pair %d %s: %.1f s", k, arm, seconds[arm][-1])
    ratios = [a / f for a, f in zip(seconds["audit"], seconds["fit"])]
    return {"pairs": pairs, "seconds": seconds, "median_fit": statistics.median(seconds["fit"]),
            "median_audit": statistics.median(seconds["audit"]),
            "ratio_of_medians": statistics.median(seconds["audit"]) / statistics.median(seconds["fit"]),
            "median_pair_ratio": statistics.median(ratios), "max_pair_ratio": max(ratios)}


def environment() -> dict:
    import sklearn
    import torch

    return {"date": datetime.date.today().isoformat(), "machine": platform.machine(), "cpus": os.cpu_count(),
            "python": platform.python_version(), "torch": torch.__version__, "sklearn": sklearn.__version__,
            "load_avg_start": os.getloadavg()[0]}


def mean_std(rows: list[dict], key: str, scale: float = 1.0, unit: str = "") -> str:
    values = [r[key] * scale for r in rows]
    return f"{statistics.fmean(values):.3f}{unit} ± {statistics.stdev(values) if len(values) > 1 else 0.0:.3f}{unit}"


def markdown(report: dict) -> str:
    rows = [r for r in report["quality"] if not r["design"]]
    lines = ["### audit on the digits folder with planted faults (report seeds, charnet features)", "",
             "| seed | images | leak recall | false cross-split pairs | flipped in top 5 % | label AP | "
             "OOD in top 5 % | out-of-sample acc | audit s |", "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['seed']} | {r['images']} | {r['leak_recall']:.3f} | {r['false_cross_split_pairs']} "
                     f"({r['false_pair_share']:.2%}) | {r['flipped_in_top_5pct']}/{r['flipped']} | "
                     f"{r['label_average_precision']:.3f} | {r['ood_in_top_5pct']}/{r['ood']} | "
                     f"{r['out_of_sample_accuracy_true_labels']:.3f} | {r['audit_wall_seconds']:.1f} |")
    if len(rows) > 1:
        lines.append(f"| mean ± std | | {mean_std(rows, 'leak_recall')} | {mean_std(rows, 'false_pair_share', 100, ' %')} | "
                     f"{mean_std(rows, 'flipped_recall_top_5pct')} | {mean_std(rows, 'label_average_precision')} | "
                     f"{mean_std(rows, 'ood_recall_top_5pct')} | {mean_std(rows, 'out_of_sample_accuracy_true_labels')} | |")
    timing = report.get("cost")
    if timing:
        lines += ["", f"Cost on the embedded digits ({timing['pairs']} pairs, whole processes, A B A B): fit median "
                      f"{timing['median_fit']:.1f} s, audit median {timing['median_audit']:.1f} s, ratio of medians "
                      f"{timing['ratio_of_medians']:.2f} (median pair ratio {timing['median_pair_ratio']:.2f}, "
                      f"worst {timing['max_pair_ratio']:.2f})."]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3], help="report seeds")
    parser.add_argument("--design", action="store_true", help="run the design seeds too")
    parser.add_argument("--pairs", type=int, default=5)
    parser.add_argument("--skip-timing", action="store_true")
    parser.add_argument("--smoke", action="store_true", help="one seed, 2 folds, no timing: a quick check")
    parser.add_argument("--output", type=Path, default=RESULTS / "audit.json")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    seeds = ([*DESIGN_SEEDS] if args.design else []) + args.seeds
    extra = ["audit.folds=2"] if args.smoke else []
    report = {"benchmark": "audit", "command": "python benchmarks/audit.py " + " ".join(sys.argv[1:]),
              "environment": environment(), "design_seeds": list(DESIGN_SEEDS)}
    with tempfile.TemporaryDirectory() as tmp:
        report["quality"] = quality(seeds[:1] if args.smoke else seeds, Path(tmp), extra)
        if not (args.skip_timing or args.smoke):
            report["cost"] = cost(args.pairs, Path(tmp))
    report["environment"]["load_avg_end"] = os.getloadavg()[0]
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(report, indent=2) + "\n")
    args.output.with_suffix(".md").write_text(markdown(report))
    log.info("\n%s-> %s", markdown(report), args.output)


if __name__ == "__main__":
    main()
