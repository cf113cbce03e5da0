"""Long-tailed classes: the default run (class-weighted loss, selection on balanced accuracy) against the same
run with `data.balance=none checkpoint.monitor=val/acc`, each with and without `logit_adjust=true`.

The data are real photographs (benchmarks/photo_sets.py's textures: crops of sklearn's and matplotlib's
sample photographs, 8 classes), built per seed with 200 training crops per common class and 5 per rare class
(1:40). The rare classes resemble common ones: `blur` (the flower photo's green, out-of-focus background)
beside `foliage`, and `water` beside `sky`. Validation keeps the tail (40 per common class, 5 per rare
one); test is balanced (50 per class), so test balanced accuracy is the mean recall over classes and plain
accuracy counts every class alike too. Each seed draws its own crops (data) and seeds its own run.

Rows: `recipe=small_similar model.weights=charnet` as shipped (frozen backbone, head solved by L-BFGS) and
the same with `finetune.head_solver=sgd` (15 SGD epochs on cached features, where checkpoint selection
matters). Arms per row, run one after another per seed on CPU through the public CLI:

    default         python -m transferkit fit recipe=small_similar model.weights=charnet data.root=<set>
    plain           ... data.balance=none checkpoint.monitor=val/acc
    default+la      ... logit_adjust=true
    plain+la        ... data.balance=none checkpoint.monitor=val/acc logit_adjust=true

    python benchmarks/long_tail.py [--seeds 0 1 2] [--rows lbfgs sgd]

Writes `benchmarks/results/long_tail.json` (every run) and `long_tail.md` (the README table).
"""

from __future__ import annotations

import argparse
import datetime
import json
import logging
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

import numpy as np  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
import photo_sets  # noqa: E402 - benchmarks/ is not a package

log = logging.getLogger("long_tail_benchmark")
RESULTS = Path(__file__).resolve().parent / "results"
RARE = ("blur", "water")           # resemble foliage and sky
PER_CLASS = {"train": 200, "val": 40, "test": 50}
RARE_PER_CLASS = {"train": 5, "val": 5, "test": 50}
COMMON = ["recipe=small_similar", "model.weights=charnet", "trainer.accelerator=cpu", "trainer.devices=1",
          "trainer.enable_progress_bar=false", "trainer.enable_model_summary=false", "data.num_workers=0"]
ARMS = {"default": [], "plain": ["data.balance=none", "checkpoint.monitor=val/acc"],
        "default+la": ["logit_adjust=true"],
        "plain+la": ["data.balance=none", "checkpoint.monitor=val/acc", "logit_adjust=true"]}
ROWS = {"lbfgs": [], "sgd": ["finetune.head_solver=sgd"]}


def build_long_tail(out: Path, seed: int) -> Path:
    """The seed's long-tailed textures folder `<out>/{train,val,test}/<class>/<n>.png` (1:40 in train)."""
    if (out / "done").is_file():
        return out
    spec = photo_sets.SetSpec("textures", tuple(PER_CLASS[s] for s in photo_sets.SPLITS), seed=100 + seed)
    rows = photo_sets.textures_set(spec, np.random.default_rng([100 + seed, 7]))
    rng = np.random.default_rng(seed)
    by_key: dict[tuple[str, str], list] = {}
    for row in rows:
        by_key.setdefault((row["split"], row["label"]), []).append(row["image"])
    for (split, label), images in sorted(by_key.items()):
        keep = (RARE_PER_CLASS if label in RARE else PER_CLASS)[split]
        chosen = sorted(rng.choice(len(images), keep, replace=False))
        folder = out / split / label
        folder.mkdir(parents=True, exist_ok=True)
        for n, index in enumerate(chosen):
            images[index].save(folder / f"{n:04d}.png")
    (out / "done").write_text("ok")
    return out


def fit(args: list[str]) -> tuple[float, dict]:
    from transferkit.cli import app as cli

    start = time.perf_counter()
    results = cli.run(["fit", *args])
    return time.perf_counter() - start, results


def rare_recall(run_dir: Path) -> dict[str, float]:
    """Test recall of the rare classes, from the report's per-class table."""
    import csv

    with (run_dir / "report" / "per_class.csv").open() as handle:
        return {r["class"]: float(r["recall"]) for r in csv.DictReader(handle) if r["class"] in RARE}


def run_all(rows: list[str], seeds: list[int], workdir: Path) -> list[dict]:
    records = []
    for seed in seeds:
        root = build_long_tail(workdir / f"set-{seed}", seed)
        for row in rows:
            for arm, extra in ARMS.items():
                run_dir = workdir / f"{row}-{arm}-{seed}"
                args = [*COMMON, *ROWS[row], *extra, f"data.root={root}", f"seed={seed}", f"run_dir={run_dir}"]
                seconds, results = fit(args)
                metrics = results["metrics"]
                record = {"row": row, "arm": arm, "seed": seed, "wall_seconds": round(seconds, 2),
                          "test_balanced_acc": metrics["test/balanced_acc"], "test_acc": metrics["test/acc"],
                          "test_f1": metrics["test/f1"], "monitor": results["monitor"]["metric"],
                          "imbalance": results["plan"].get("imbalance"), "rare_recall": rare_recall(run_dir),
                          "train_size": results["data"]["train_size"], "epochs": results["epochs"]}
                records.append(record)
                log.info("%s %s seed %d: test balanced acc %.4f, acc %.4f, rare recall %s (%.0f s)", row, arm, seed,
                         record["test_balanced_acc"], record["test_acc"], record["rare_recall"], seconds)
    return records


def stats(values: list[float]) -> str:
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{100 * statistics.fmean(values):.1f} ± {100 * std:.1f}"


def markdown(records: list[dict], rows: list[str], seeds: list[int]) -> str:
    lines = [f"Test metrics in % (mean ± std over seeds {seeds}); textures 8 classes, train 200 per common class "
             f"and 5 per rare class ({', '.join(RARE)}), test 50 per class.", "",
             "| head | arm | selection | balanced acc | macro F1 | acc | rare-class recall |", "|---|---|---|---|---|---|---|"]
    for row in rows:
        for arm in ARMS:
            runs = [r for r in records if r["row"] == row and r["arm"] == arm]
            rare = [statistics.fmean(r["rare_recall"].values()) for r in runs]
            lines.append(f"| {row} | {arm} | {runs[0]['monitor']} | {stats([r['test_balanced_acc'] for r in runs])} | "
                         f"{stats([r['test_f1'] for r in runs])} | {stats([r['test_acc'] for r in runs])} | "
                         f"{stats(rare)} |")
    return "\n".join(lines) + "\n"


def environment() -> dict:
    import pytorch_lightning
    import torch

    return {"date": datetime.date.today().isoformat(), "machine": platform.machine(), "cpus": os.cpu_count(),
            "python": platform.python_version(), "torch": torch.__version__,
            "pytorch_lightning": pytorch_lightning.__version__}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--rows", nargs="+", default=list(ROWS), choices=list(ROWS))
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--name", default="long_tail")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="long_tail_"))
    records = run_all(args.rows, args.seeds, workdir)
    RESULTS.mkdir(exist_ok=True)
    table = markdown(records, args.rows, args.seeds)
    (RESULTS / f"{args.name}.json").write_text(json.dumps(
        {"environment": environment(), "seeds": args.seeds, "rows": {r: ROWS[r] for r in args.rows}, "arms": ARMS,
         "common": COMMON, "per_class": PER_CLASS, "rare_per_class": RARE_PER_CLASS, "rare": RARE,
         "runs": records}, indent=1))
    (RESULTS / f"{args.name}.md").write_text(table)
    print(table)  # noqa: T201 - the benchmark's table on the terminal


if __name__ == "__main__":
    main()
