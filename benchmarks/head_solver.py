"""Frozen head: `finetune.head_solver=lbfgs` (one cross-validated L-BFGS solve) vs `sgd` (the recipe's epochs).

Both arms run `python -m transferkit fit recipe=small_similar finetune.head_solver=<arm>` through the
public CLI in one process, on CPU, on the same cached charnet features of the embedded digits, paired
per seed (sgd, lbfgs, sgd, lbfgs, ...) after a warm-up fit. Two data sizes: the recipe's full training
split (1257 images) and 10 images per class (100), drawn per seed from the training split (seeded by the
seed, the same draw for both arms; val and test untouched). The draw emulates `data.train_per_class`
(branch `embedded`, not merged here) by wrapping `load_digits_splits`. Reported: test accuracy mean ±
std over seeds, and the whole `fit` wall time (build, features, training or solve, test).

    python benchmarks/head_solver.py [--seeds 0 1 2 3 4] [--sizes full 10]

Writes `benchmarks/results/head_solver.json` (every run) and `head_solver.md` (the README table).
"""

from __future__ import annotations

import argparse
import datetime
import json
import logging
import os
import platform
import statistics
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

import numpy as np  # noqa: E402

log = logging.getLogger("head_solver_benchmark")
RESULTS = Path(__file__).resolve().parent / "results"
COMMON = ["trainer.accelerator=cpu", "trainer.devices=1", "trainer.enable_progress_bar=false",
          "trainer.enable_model_summary=false", "data.num_workers=0"]


@contextmanager
def few_shot_digits(per_class: int | None, seed: int) -> Iterator[None]:
    """Keep `per_class` training digits per class (a draw seeded by `seed`); None keeps them all."""
    from transferkit.data.embedded import digits

    original = digits.load_digits_splits
    if per_class is None:
        yield
        return

    def draw(*args, **kwargs):
        splits = original(*args, **kwargs)
        images, labels = splits["train"]
        rng = np.random.default_rng(seed)
        keep = np.sort(np.concatenate([rng.choice(np.flatnonzero(labels == c), per_class, replace=False)
                                       for c in np.unique(labels)]))
        return {**splits, "train": (images[keep], labels[keep])}

    digits.load_digits_splits = draw
    try:
        yield
    finally:
        digits.load_digits_splits = original


def fit(args: list[str], per_class: int | None, seed: int) -> tuple[float, dict]:
    from transferkit.cli import app as cli
    start = time.perf_counter()
    with few_shot_digits(per_class, seed):
        results = cli.run(["fit", *args, f"seed={seed}"])
    return time.perf_counter() - start, results


def summarise(runs: list[dict], key: str = "test_acc") -> dict:
    values = [r[key] for r in runs]
    return {"mean": statistics.fmean(values), "std": statistics.stdev(values) if len(values) > 1 else 0.0,
            "n": len(values)}


def environment() -> dict:
    import pytorch_lightning
    import sklearn
    import torch

    return {"date": datetime.date.today().isoformat(), "machine": platform.machine(), "cpus": os.cpu_count(),
            "python": platform.python_version(), "torch": torch.__version__,
            "pytorch_lightning": pytorch_lightning.__version__, "sklearn": sklearn.__version__,
            "torch_threads": torch.get_num_threads(), "load_avg_start": os.getloadavg()[0]}


def run_arms(arms: dict[str, list[str]], sizes: list[int | None], seeds: list[int], workdir: Path) -> list[dict]:
    """Every (size, seed, arm) fit, arms interleaved per seed; one record per fit."""
    records = []
    for per_class in sizes:
        for seed in seeds:
            for arm, extra in arms.items():
                run_dir = workdir / f"{arm}-{per_class}-{seed}"
                seconds, results = fit([*extra, *COMMON, f"run_dir={run_dir}"], per_class, seed)
                record = {"arm": arm, "per_class": per_class, "seed": seed, "wall_seconds": round(seconds, 2),
                          "test_acc": results["metrics"]["test/acc"], "val_acc": results["metrics"].get("val/acc"),
                          "train_size": results["data"]["train_size"], "epochs": results["epochs"],
                          "linear_probe": results.get("linear_probe")}
                records.append(record)
                log.info("%s, %s per class, seed %d: test acc %.4f, %.1f s", arm, per_class or "all", seed,
                         record["test_acc"], seconds)
    return records


def table(records: list[dict], arms: list[str], sizes: list[int | None]) -> list[dict]:
    rows = []
    for per_class in sizes:
        for arm in arms:
            runs = [r for r in records if r["arm"] == arm and r["per_class"] == per_class]
            acc, wall = summarise(runs), summarise(runs, "wall_seconds")
            rows.append({"arm": arm, "per_class": per_class, "train_size": runs[0]["train_size"],
                         "test_acc_mean": round(acc["mean"], 4), "test_acc_std": round(acc["std"], 4),
                         "wall_seconds_mean": round(wall["mean"], 1), "wall_seconds_std": round(wall["std"], 1),
                         "seeds": acc["n"]})
    return rows


def markdown(rows: list[dict], title: str) -> str:
    lines = [f"### {title}", "", "| training images | arm | test acc (mean ± std) | fit wall s (mean ± std) |",
             "|---|---|---|---|"]
    for row in rows:
        size = f"{row['train_size']} ({'all' if row['per_class'] is None else str(row['per_class']) + '/class'})"
        lines.append(f"| {size} | {row['arm']} | {row['test_acc_mean']:.4f} ± {row['test_acc_std']:.4f} | "
                     f"{row['wall_seconds_mean']:.1f} ± {row['wall_seconds_std']:.1f} |")
    return "\n".join(lines) + "\n"


def parse_sizes(values: list[str]) -> list[int | None]:
    return [None if v == "full" else int(v) for v in values]


def main(arms: dict[str, list[str]] | None = None, name: str = "head_solver",
         title: str = "Frozen head: L-BFGS solve vs SGD epochs (recipe=small_similar, embedded digits)",
         default_sizes: tuple[str, ...] = ("full", "10")) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--sizes", nargs="+", default=list(default_sizes), help="'full' or images per class")
    parser.add_argument("--output", type=Path, default=RESULTS / f"{name}.json")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    arms = arms or {"sgd": ["recipe=small_similar", "finetune.head_solver=sgd"],
                    "lbfgs": ["recipe=small_similar", "finetune.head_solver=lbfgs"]}
    sizes = parse_sizes(args.sizes)
    env = environment()
    with tempfile.TemporaryDirectory() as tmp:
        # Warm-up: imports and first-call costs are paid here, not by whichever arm goes first.
        fit(["recipe=small_similar", *COMMON, "trainer.max_epochs=1", f"run_dir={Path(tmp) / 'warmup'}"], 10, 0)
        start = time.perf_counter()
        records = run_arms(arms, sizes, args.seeds, Path(tmp))
    rows = table(records, list(arms), sizes)
    report = {"benchmark": name, "command": "python benchmarks/" + f"{name}.py", "arms": arms,
              "seeds": args.seeds, "environment": {**env, "total_seconds": round(time.perf_counter() - start, 1),
                                                    "load_avg_end": os.getloadavg()[0]},
              "summary": rows, "runs": records}
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(report, indent=2) + "\n")
    args.output.with_suffix(".md").write_text(markdown(rows, title))
    log.info("\n%s-> %s", markdown(rows, title), args.output)


if __name__ == "__main__":
    main()
