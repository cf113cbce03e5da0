"""5-fold cross-validation on the embedded digits: single models against the folds' ensemble.

For each seed: `python -m transferkit cv recipe=small_similar data.num_folds=5 seed=S` (five models,
each trained on 4/5 of train+val, the fixed test split untouched), the ensemble of the five on the
test split with `tta=none` and `tta=multiscale` (`test ckpt_path=<cv run>`), and for comparison the
plain single model of the main job, `fit recipe=small_similar seed=S` (trained on train, val held out).

    python benchmarks/cv_digits.py --seeds 0 1 2

Writes `benchmarks/results/cv_digits.json` and `.md`.
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
QUIET = ["trainer.enable_progress_bar=false", "trainer.enable_model_summary=false"]


def transferkit(*args: str) -> tuple[dict, float]:
    env = {**os.environ, "PYTHONPATH": str(REPO), "NO_ALBUMENTATIONS_UPDATE": "1"}
    env.pop("TRANSFERKIT_RUN_DIR", None)
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "transferkit", *args], env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"{args}: exit {proc.returncode}\n{proc.stderr[-2000:]}")
    run_dir = next(a.split("=", 1)[1] for a in args if a.startswith("run_dir="))
    return json.loads((Path(run_dir) / "results.json").read_text()), round(time.perf_counter() - start, 1)


def one_seed(seed: int, folds: int, work: Path) -> dict:
    cv, cv_wall = transferkit("cv", "recipe=small_similar", f"data.num_folds={folds}", f"seed={seed}", *QUIET,
                              f"run_dir={work / f'cv{seed}'}")
    multi, _ = transferkit("test", f"ckpt_path={work / f'cv{seed}'}", "tta=multiscale", *QUIET,
                           f"run_dir={work / f'multi{seed}'}")
    fit, fit_wall = transferkit("fit", "recipe=small_similar", f"seed={seed}", *QUIET, f"run_dir={work / f'fit{seed}'}")
    return {"seed": seed, "fold_test_acc": [row["test/acc"] for row in cv["cv"]["folds"]],
            "fold_mean": cv["cv"]["mean"]["test/acc"], "fold_std": cv["cv"]["std"]["test/acc"],
            "ensemble_test_acc": cv["metrics"]["test/acc"], "ensemble_multiscale_test_acc": multi["metrics"]["test/acc"],
            "fit_test_acc": fit["metrics"]["test/acc"], "cv_wall_seconds": cv_wall, "fit_wall_seconds": fit_wall}


def mean_std(values: list[float]) -> str:
    return f"{statistics.mean(values):.4f} ± {statistics.stdev(values) if len(values) > 1 else 0.0:.4f}"


def table(rows: list[dict]) -> str:
    lines = ["| seed | fold models, test/acc (mean ± std of 5) | 5-fold ensemble | ensemble, tta=multiscale | "
             "`fit` single model |", "|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['seed']} | {r['fold_mean']:.4f} ± {r['fold_std']:.4f} | {r['ensemble_test_acc']:.4f} | "
                     f"{r['ensemble_multiscale_test_acc']:.4f} | {r['fit_test_acc']:.4f} |")
    every_fold = [a for r in rows for a in r["fold_test_acc"]]
    lines.append(f"| all | {mean_std(every_fold)} ({len(every_fold)} models) | "
                 f"{mean_std([r['ensemble_test_acc'] for r in rows])} | "
                 f"{mean_std([r['ensemble_multiscale_test_acc'] for r in rows])} | "
                 f"{mean_std([r['fit_test_acc'] for r in rows])} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--folds", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        rows = [one_seed(seed, args.folds, Path(tmp)) for seed in args.seeds]
    import torch

    record = {"date": datetime.date.today().isoformat(), "machine": platform.processor() or platform.machine(),
              "cpus": os.cpu_count(), "python": platform.python_version(), "torch": torch.__version__,
              "command": "python -m transferkit cv recipe=small_similar data.num_folds=5 seed=S", "rows": rows}
    out = REPO / "benchmarks" / "results"
    (out / "cv_digits.json").write_text(json.dumps(record, indent=2) + "\n")
    (out / "cv_digits.md").write_text(table(rows) + "\n")
    print(table(rows))


if __name__ == "__main__":
    main()
