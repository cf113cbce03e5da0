"""Which fine-tuning strategy wins in each quadrant of the size x similarity matrix? (issue 3, item 6)

For every quadrant recipe, on its embedded dataset (no `data.root`), runs `freeze`, `partial`,
`full` and `auto` through the real CLI (`transferkit.cli.app.run(["fit", "recipe=<q>", "finetune=<s>",
...])`) with the same budget for every strategy of a quadrant, and collects test accuracy, wall
time and trainable parameters from each run's `results.json` (for `auto`: also the measured
placement and the strategy it chose). The recipe's other settings (LR, backbone LR scale,
augmentation, schedule) are kept; only epochs and, for the large sets, the number of generated
training images are cut (`BUDGETS`) so that the whole matrix fits a shared 2-core CPU.

    python benchmarks/strategy_matrix.py                      # all quadrants, all strategies
    python benchmarks/strategy_matrix.py --quadrants small_different --strategies freeze full
    python benchmarks/strategy_matrix.py --scale 0.1 --weights none   # plumbing check, minutes

Writes `benchmarks/results/strategy_matrix.json` (every run) and `strategy_matrix.md` (the table
README.md quotes).
"""

from __future__ import annotations

import argparse
import datetime
import json
import logging
import os
import platform
import tempfile
import time
from pathlib import Path

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

log = logging.getLogger("strategy_matrix")
REPO = Path(__file__).resolve().parents[1]
QUADRANTS = ("small_similar", "small_different", "large_similar", "large_different")
STRATEGIES = ("freeze", "partial", "full", "auto")
# Per quadrant: epochs and generated training images (None = the recipe's data, e.g. the real
# digits). The large sets keep 500+ images per class (advise.size_threshold), so they stay large.
BUDGETS: dict[str, dict[str, int | None]] = {
    "small_similar": {"epochs": 3, "embedded_length": None},   # 1257 real digits
    "small_different": {"epochs": 10, "embedded_length": None},  # 120 shapes (recipe's size)
    "large_similar": {"epochs": 1, "embedded_length": 5000},   # 500 per class
    "large_different": {"epochs": 2, "embedded_length": 2000},  # 500 per class
}
COMMON = ["data.num_workers=0", "trainer.accelerator=cpu", "trainer.devices=1",
          "trainer.enable_progress_bar=false", "trainer.enable_model_summary=false"]


def run_overrides(quadrant: str, strategy: str, run_dir: Path, scale: float, weights: str | None) -> list[str]:
    """The CLI overrides of one benchmark run."""
    budget = BUDGETS[quadrant]
    epochs = max(1, round(budget["epochs"] * scale)) if scale < 1 else budget["epochs"]
    overrides = [f"recipe={quadrant}", f"finetune={strategy}", f"trainer.max_epochs={epochs}",
                 # a warmup longer than the cut run would never reach the recipe's LR
                 f"scheduler.warmup_epochs={min(0.2 * epochs, 1.0):g}", f"run_dir={run_dir}", *COMMON]
    if budget["embedded_length"] is not None:
        overrides.append(f"data.embedded_length={max(40, round(budget['embedded_length'] * scale))}")
    elif scale < 1 and quadrant == "small_different":
        overrides.append("data.embedded_length=40")
    if weights is not None:
        overrides.append(f"model.weights={weights}")
    return overrides


def summarise(quadrant: str, strategy: str, results: dict) -> dict:
    """The row of the table: what ran, how well, how long, how much trained."""
    advice = results.get("advice") or {}
    data = results["data"]
    return {
        "quadrant": quadrant, "strategy": strategy,
        "applied_strategy": (results.get("finetune") or {}).get("strategy", strategy),
        "placed_in": advice.get("quadrant"), "similarity": advice.get("similarity"),
        "logme_gain": advice.get("logme_gain"),
        "embedded": data.get("embedded"), "train_size": data["train_size"], "num_classes": data["num_classes"],
        "test_acc": results["metrics"].get("test/acc"), "wall_seconds": results["wall_seconds"],
        "trainable_params": results["params"]["trainable"], "total_params": results["params"]["total"],
        "feature_cache": bool((results.get("feature_cache") or {}).get("used")),
        "run_dir": results.get("run_dir"),
    }


def run_one(quadrant: str, strategy: str, root: Path, scale: float, weights: str | None) -> dict:
    from transferkit.cli import app as cli
    overrides = run_overrides(quadrant, strategy, root / f"{quadrant}-{strategy}", scale, weights)
    log.info("fit %s", " ".join(overrides))
    start = time.time()
    results = cli.run(["fit", *overrides])
    row = summarise(quadrant, strategy, results)
    row["overrides"] = overrides
    log.info("%s/%s: test/acc %.4f in %.0f s (%.0f s with start-up)", quadrant, strategy, row["test_acc"],
             row["wall_seconds"], time.time() - start)
    return row


def winners(rows: list[dict]) -> dict[str, str]:
    """Per quadrant, the strategy with the best test accuracy (ties: the faster run)."""
    best: dict[str, dict] = {}
    for row in rows:
        current = best.get(row["quadrant"])
        key = (row["test_acc"], -row["wall_seconds"])
        if current is None or key > (current["test_acc"], -current["wall_seconds"]):
            best[row["quadrant"]] = row
    return {quadrant: row["strategy"] for quadrant, row in best.items()}


def markdown_table(rows: list[dict], recipe_strategy: dict[str, str]) -> str:
    won = winners(rows)
    lines = ["| quadrant | data (train images, classes) | strategy | test acc | wall s | trainable params |",
             "|---|---|---|---|---|---|"]
    for row in rows:
        name = row["strategy"]
        if name == "auto":
            name = f"auto → {row['applied_strategy']} (placed: {row['placed_in']})"
        if name.split()[0] == recipe_strategy.get(row["quadrant"]):
            name += " (recipe)"
        acc = f"{row['test_acc']:.3f}"
        if won.get(row["quadrant"]) == row["strategy"]:
            acc = f"**{acc}**"
        lines.append(f"| {row['quadrant']} | {row['embedded']} ({row['train_size']}, {row['num_classes']}) | {name} "
                     f"| {acc} | {row['wall_seconds']:.0f} | {row['trainable_params']:,} |")
    return "\n".join(lines)


def recipe_strategies() -> dict[str, str]:
    from transferkit.cli import app as cli
    return {q: cli.compose_config([f"recipe={q}"]).finetune.strategy for q in QUADRANTS}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quadrants", nargs="+", default=list(QUADRANTS), choices=QUADRANTS)
    parser.add_argument("--strategies", nargs="+", default=list(STRATEGIES), choices=STRATEGIES)
    parser.add_argument("--scale", type=float, default=1.0,
                        help="multiply epochs and generated sizes (< 1: a quick plumbing check)")
    parser.add_argument("--weights", default=None, help="override model.weights (default: the recipes' charnet)")
    parser.add_argument("--runs-dir", type=Path, default=None, help="where run directories go (default: a temp dir)")
    parser.add_argument("--output", type=Path, default=REPO / "benchmarks" / "results" / "strategy_matrix.json")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    args = parse_args(argv)
    root = args.runs_dir or Path(tempfile.mkdtemp(prefix="strategy_matrix-"))
    start = time.time()
    rows = [run_one(q, s, root, args.scale, args.weights) for q in args.quadrants for s in args.strategies]
    recipes = recipe_strategies()
    table = markdown_table(rows, recipes)
    record = {
        "date": datetime.date.today().isoformat(), "machine": f"{platform.machine()}, {os.cpu_count()} CPUs",
        "scale": args.scale, "weights": args.weights or "charnet (recipes)", "budgets": BUDGETS,
        "common_overrides": COMMON, "total_wall_seconds": round(time.time() - start, 1),
        "recipe_strategy": recipes, "winners": winners(rows), "runs": rows,
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(record, indent=2) + "\n")
    args.output.with_suffix(".md").write_text(table + "\n")
    log.info("\n%s", table)
    log.info("winners: %s; total %.0f s; wrote %s", record["winners"], record["total_wall_seconds"], args.output)


if __name__ == "__main__":
    main()
