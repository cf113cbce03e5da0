"""The main job, before and after a change, side by side: `python -m transferkit fit recipe=small_similar`.

Runs the command from two source trees in alternation (A B A B ...), each as a fresh process with
the same interpreter, and compares wall time (process start to exit) and test accuracy. The
baseline tree is any checkout of an earlier commit (`git worktree add /tmp/base <commit>`).

    python benchmarks/main_job.py --baseline /tmp/base --pairs 10

A ratio rests on at least 10 A B pairs (`--pairs`, default 10); the JSON keeps every pair's ratio and
their spread (min, quartiles, max) beside the median.

Writes `benchmarks/results/main_job.json`.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
COMMAND = ["-m", "transferkit", "fit", "recipe=small_similar", "trainer.enable_progress_bar=false"]


def run_process(tree: Path, run_dir: Path, *extra: str) -> tuple[subprocess.CompletedProcess, dict, float]:
    """The main job (plus `extra` overrides) as a fresh process of `tree`: the process, its results.json
    and its whole wall time (start to exit)."""
    env = {**os.environ, "PYTHONPATH": str(tree), "NO_ALBUMENTATIONS_UPDATE": "1"}
    env.pop("TRANSFERKIT_RUN_DIR", None)
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, *COMMAND, *extra, f"run_dir={run_dir}"], cwd=run_dir.parent, env=env,
                          capture_output=True, text=True)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise RuntimeError(f"{tree}: exit {proc.returncode}\n{proc.stderr[-2000:]}")
    return proc, json.loads((run_dir / "results.json").read_text()), wall


def run(tree: Path, run_dir: Path) -> dict:
    _, results, wall = run_process(tree, run_dir)
    return {"wall_seconds": round(wall, 2), "test_acc": results["metrics"]["test/acc"]}


def git_head(tree: Path) -> str:
    return subprocess.run(["git", "-C", str(tree), "rev-parse", "--short", "HEAD"], capture_output=True,
                          text=True).stdout.strip()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--baseline", type=Path, required=True, help="source tree of the earlier commit")
    parser.add_argument("--pairs", type=int, default=10)
    parser.add_argument("--current", type=Path, default=REPO, help="source tree of the change (default: this one)")
    parser.add_argument("--output", type=Path, default=REPO / "benchmarks" / "results" / "main_job.json")
    args = parser.parse_args(argv)
    root = Path(tempfile.mkdtemp(prefix="main_job-"))
    rows: dict[str, list[dict]] = {"baseline": [], "current": []}
    for i in range(args.pairs):
        for name, tree in (("baseline", args.baseline), ("current", args.current)):
            rows[name].append(run(tree, root / f"{name}-{i}"))
            print(f"{name} {i}: {rows[name][-1]}", flush=True)  # noqa: T201 - a benchmark script's output
    walls = {name: [r["wall_seconds"] for r in runs] for name, runs in rows.items()}
    ratios = [c / b for c, b in zip(walls["current"], walls["baseline"])]
    ratio = statistics.median(ratios)
    quartiles = statistics.quantiles(ratios, n=4) if len(ratios) > 1 else [ratio] * 3
    record = {"date": datetime.date.today().isoformat(), "machine": f"{platform.machine()}, {os.cpu_count()} CPUs",
              "command": "python " + " ".join(COMMAND), "baseline_commit": git_head(args.baseline),
              "current_commit": git_head(args.current), "runs": rows,
              "pairs": len(ratios), "pair_ratios": [round(r, 3) for r in ratios],
              "pair_ratio_spread": {"min": round(min(ratios), 3), "q1": round(quartiles[0], 3),
                                    "q3": round(quartiles[2], 3), "max": round(max(ratios), 3)},
              "median_wall": {n: statistics.median(w) for n, w in walls.items()},
              "median_pair_ratio_current_over_baseline": round(ratio, 3),
              "test_acc": {n: sorted({r["test_acc"] for r in runs}) for n, runs in rows.items()}}
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(record, indent=2) + "\n")
    print(json.dumps({k: record[k] for k in ("median_wall", "median_pair_ratio_current_over_baseline", "pair_ratio_spread", "test_acc")}))  # noqa: T201


if __name__ == "__main__":
    main()
