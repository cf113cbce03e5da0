"""Does `finetune=auto` (the race) find the best model? Auto against every fixed strategy (issue 9).

Rows: every embedded quadrant data set, plus 10- and 5-per-class cuts of the real digits
(`data.train_per_class`, one fixed draw). Columns: `freeze`, `partial`, `full`, `scratch` (the
same architecture from random init, `finetune=full`, backbone LR x 1) and `auto`, each over
`--seeds` seeds, through the real CLI (`transferkit.cli.app.run(["fit", ...])`). Each row keeps its
recipe's settings; only epochs and generated set sizes are cut (`ROWS`) so that the whole
benchmark fits a 2-core CPU in well under 90 minutes. Every strategy of a row gets the same epochs.

    python benchmarks/auto_vs_fixed.py                       # everything, 3 seeds
    python benchmarks/auto_vs_fixed.py --rows digits-10pc --strategies freeze auto --seeds 5
    python benchmarks/auto_vs_fixed.py --draws 5             # + the spread over 5 draws of 10/class
    python benchmarks/auto_vs_fixed.py --scale 0.2 --seeds 1 # plumbing check, minutes
    python benchmarks/auto_vs_fixed.py --rows digits-5pc shapes-large --strategies full auto --redo
                                                             # measure those again, keep the rest

Writes `benchmarks/results/auto_vs_fixed.json` (every run, appended as they finish, so an
interrupted benchmark resumes where it stopped) and `auto_vs_fixed.md` (the table README quotes).
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
from pathlib import Path

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

log = logging.getLogger("auto_vs_fixed")
REPO = Path(__file__).resolve().parents[1]
# Per row: the recipe, epochs for every strategy, and extra overrides (data cuts).
ROWS: dict[str, dict] = {
    "digits": {"recipe": "small_similar", "epochs": 9, "extra": []},                    # 1257 real digits
    "digits-10pc": {"recipe": "small_similar", "epochs": 15, "extra": ["data.train_per_class=10"]},
    "digits-5pc": {"recipe": "small_similar", "epochs": 15, "extra": ["data.train_per_class=5"]},
    "shapes-small": {"recipe": "small_different", "epochs": 15, "extra": []},           # 120 shapes
    "synthdigits": {"recipe": "large_similar", "epochs": 9, "extra": ["data.embedded_length=1500"]},
    "shapes-large": {"recipe": "large_different", "epochs": 9, "extra": ["data.embedded_length=1000"]},
}
STRATEGIES: dict[str, list[str]] = {
    "freeze": ["finetune=freeze"],
    "partial": ["finetune=partial"],
    "full": ["finetune=full"],
    "scratch": ["finetune=full", "model.weights=none", "finetune.backbone_lr_scale=1.0"],
    "auto": ["finetune=auto"],
    # Not in the default set: the head trained by SGD epochs, as `freeze` did before the L-BFGS solve
    # (the "before" of the few-shot spread; `--strategies freeze-sgd --rows digits-10pc --seeds 5`).
    "freeze-sgd": ["finetune=freeze", "finetune.head_solver=sgd"],
}
DEFAULT_STRATEGIES = ("freeze", "partial", "full", "scratch", "auto")
COMMON = ["data.num_workers=0", "trainer.accelerator=cpu", "trainer.devices=1",
          "trainer.enable_progress_bar=false", "trainer.enable_model_summary=false"]


def run_overrides(row: str, strategy: str, seed: int, draw: int, scale: float, run_dir: Path) -> list[str]:
    spec = ROWS[row]
    epochs = max(3, round(spec["epochs"] * scale))  # the race needs 3 epochs for its 2x cost bound
    extra = [e if not e.startswith("data.embedded_length=") or scale == 1 else
             f"data.embedded_length={max(200, round(int(e.split('=')[1]) * scale))}" for e in spec["extra"]]
    return [f"recipe={spec['recipe']}", *STRATEGIES[strategy], f"trainer.max_epochs={epochs}",
            f"scheduler.warmup_epochs={min(0.2 * epochs, 1.0):g}", f"seed={seed}", f"data.draw_seed={draw}",
            *extra, *COMMON, f"run_dir={run_dir}"]


def run_one(row: str, strategy: str, seed: int, draw: int, scale: float, root: Path) -> dict:
    from transferkit.cli import app as cli
    overrides = run_overrides(row, strategy, seed, draw, scale, root / f"{row}-{strategy}-s{seed}-d{draw}")
    start = time.time()
    results = cli.run(["fit", *overrides])
    auto = results.get("auto") or {}
    record = {"row": row, "strategy": strategy, "seed": seed, "draw": draw,
              "test_acc": results["metrics"]["test/acc"], "wall_seconds": round(time.time() - start, 1),
              "train_size": results["data"]["train_size"], "winner": auto.get("winner"),
              "candidates": [c["name"] for c in auto.get("candidates", [])], "overrides": overrides}
    log.info("%s/%s seed %d draw %d: test/acc %.4f in %.0f s%s", row, strategy, seed, draw, record["test_acc"],
             record["wall_seconds"], f" (winner {record['winner']})" if record["winner"] else "")
    return record


def stats(values: list[float]) -> dict:
    mean = statistics.fmean(values)
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return {"mean": mean, "std": std, "se": std / len(values) ** 0.5, "n": len(values)}


def summarise(runs: list[dict]) -> dict:
    """Per row and strategy: accuracy mean/std/se and mean wall time; auto's verdicts."""
    table: dict[str, dict] = {}
    for run in runs:
        if run["draw"] != 0:
            continue
        cell = table.setdefault(run["row"], {}).setdefault(run["strategy"], {"acc": [], "wall": [], "winners": []})
        cell["acc"].append(run["test_acc"])
        cell["wall"].append(run["wall_seconds"])
        if run["winner"]:
            cell["winners"].append(run["winner"])
    summary = {}
    for row, cells in table.items():
        out = {s: {**stats(c["acc"]), "wall": statistics.fmean(c["wall"]), "winners": c["winners"]}
               for s, c in cells.items()}
        fixed = {s: v for s, v in out.items() if s in DEFAULT_STRATEGIES and s != "auto"}
        if "auto" in out and fixed:
            best = max(fixed, key=lambda s: fixed[s]["mean"])
            gap = fixed[best]["mean"] - out["auto"]["mean"]
            allowed = max(0.01, fixed[best]["se"], out["auto"]["se"])
            slowest = max(v["wall"] for v in fixed.values())
            out["verdict"] = {"best_fixed": best, "gap": gap, "allowed": allowed, "ok": gap <= allowed,
                              "wall_ratio": out["auto"]["wall"] / slowest}
        summary[row] = out
    return summary


def draw_spread(runs: list[dict]) -> dict:
    """The spread over different draws of the same cut (seed fixed): what no training choice removes."""
    spread: dict[str, list[float]] = {}
    for run in runs:
        if run["row"] == "digits-10pc" and run["seed"] == 42:
            spread.setdefault(run["strategy"], []).append(run["test_acc"])
    return {s: stats(v) for s, v in spread.items() if len(v) > 1}


def markdown(summary: dict, spread: dict) -> str:
    names = [s for s in DEFAULT_STRATEGIES if any(s in cells for cells in summary.values())]
    lines = ["| data | " + " | ".join(names) + " | auto's picks | auto within max(1 pt, SE) of best | auto wall / slowest fixed |",
             "|---|" + "---|" * (len(names) + 3)]
    gaps = []
    for row, cells in summary.items():
        best = max((cells[s]["mean"] for s in names if s in cells and s != "auto"), default=None)
        parts = []
        for s in names:
            if s not in cells:
                parts.append("–")
                continue
            text = f"{100 * cells[s]['mean']:.1f} ± {100 * cells[s]['std']:.1f}"
            parts.append(f"**{text}**" if best is not None and cells[s]["mean"] >= best and s != "auto" else text)
        verdict = cells.get("verdict")
        picks = ", ".join(sorted(set(cells.get("auto", {}).get("winners", [])))) or "–"
        ok = "–" if not verdict else f"{'yes' if verdict['ok'] else 'no'} ({100 * verdict['gap']:+.1f} pt)"
        ratio = "–" if not verdict else f"{verdict['wall_ratio']:.2f}×"
        if verdict:
            gaps.append(verdict["gap"])
        wall = " / ".join(f"{cells[s]['wall']:.0f}" for s in names if s in cells)
        lines.append(f"| {row} (wall s: {wall}) | " + " | ".join(parts) + f" | {picks} | {ok} | {ratio} |")
    text = "\n".join(lines)
    if gaps:
        text += f"\n\nMean gap, best fixed strategy minus auto, over {len(gaps)} rows: {100 * statistics.fmean(gaps):+.2f} points."
    for strategy, s in spread.items():
        text += f"\n\n10 per class, {s['n']} different draws (seed 42): {strategy} {100 * s['mean']:.1f} ± {100 * s['std']:.1f}."
    few = summary.get("digits-10pc", {})
    for strategy in ("freeze-sgd", "freeze", "auto"):
        if strategy in few:
            c = few[strategy]
            text += (f"\n\n10 per class, one fixed draw, {c['n']} seeds: {strategy} {100 * c['mean']:.1f} ± "
                     f"{100 * c['std']:.1f}.")
    return text + "\n"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", nargs="+", default=list(ROWS), choices=list(ROWS))
    parser.add_argument("--strategies", nargs="+", default=list(DEFAULT_STRATEGIES), choices=list(STRATEGIES))
    parser.add_argument("--seeds", type=int, default=3, help="seeds 42, 1, 2, ... (initialisation, batch order)")
    parser.add_argument("--draws", type=int, default=0, help="also run freeze and auto on this many draws of 10/class")
    parser.add_argument("--scale", type=float, default=1.0, help="< 1: fewer epochs and images (plumbing check)")
    parser.add_argument("--runs-dir", type=Path, default=None)
    parser.add_argument("--output", type=Path, default=REPO / "benchmarks" / "results" / "auto_vs_fixed.json")
    parser.add_argument("--redo", action="store_true",
                        help="run the selected rows x strategies x seeds again, replacing their records in "
                             "--output (without it, runs recorded there are skipped: an interrupted run, or an "
                             "interrupted --redo, resumes by running the same command without --redo)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    args = parse_args(argv)
    root = args.runs_dir or Path(tempfile.mkdtemp(prefix="auto_vs_fixed-"))
    seeds = [42, 1, 2, 3, 4, 5, 6][:args.seeds]
    jobs = [(r, s, seed, 0) for r in args.rows for seed in seeds for s in args.strategies]
    jobs += [("digits-10pc", s, 42, d) for d in range(1, args.draws) for s in ("freeze", "auto")]
    record = json.loads(args.output.read_text()) if args.output.is_file() else {"runs": []}
    if args.redo:  # drop the old records of these jobs; an interrupted redo resumes without --redo
        again = set(jobs)
        record["runs"] = [r for r in record["runs"] if (r["row"], r["strategy"], r["seed"], r["draw"]) not in again]
    done = {(r["row"], r["strategy"], r["seed"], r["draw"]) for r in record["runs"]}
    start = time.time()
    for job in jobs:
        if job in done:
            continue
        record["runs"].append(run_one(*job, args.scale, root))
        record.update({"date": datetime.date.today().isoformat(), "scale": args.scale, "rows": ROWS,
                       "machine": f"{platform.machine()}, {os.cpu_count()} CPUs", "common_overrides": COMMON})
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(json.dumps(record, indent=2) + "\n")
    summary, spread = summarise(record["runs"]), draw_spread(record["runs"])
    record.update({"summary": summary, "draw_spread": spread})
    record["total_wall_seconds"] = round(sum(r["wall_seconds"] for r in record["runs"]), 1)
    args.output.write_text(json.dumps(record, indent=2) + "\n")
    table = markdown(summary, spread)
    args.output.with_suffix(".md").write_text(table)
    log.info("\n%s\nthis invocation: %.0f s; wrote %s", table, time.time() - start, args.output)


if __name__ == "__main__":
    main()
