"""Replay race rules on recorded learning curves: how the race's rule was chosen (issue 22).

`auto_vs_fixed.py --curves` trains each of the race's candidates alone for the row's full epochs and
keeps every epoch's validation predictions (`auto_vs_fixed.curves.json`). A race whose legs continue
one schedule (the race's legs train exactly as a candidate trained alone: tested in tests/test_race.py)
is then a question of which curve prefixes it looks at, so any cut schedule and any scoring rule can be
replayed on the same curves without training again: the winner's test accuracy is its run's.

    python benchmarks/race_design.py                       # every variant on the design rows
    python benchmarks/race_design.py --variants budget-1 --rows sources

Each variant is one rule that was tried; `VARIANTS` lists them all, in the order they were tried, and
the README's count of rules tried is its length (the first is the rule before issue 22). The last is
the rule that shipped (`transferkit.planning.race.choose_field`: on the design rows scratch entered,
so the field was freeze, full-llrd, scratch). Legs with schedules of their own (variants 6 and 7) are
replayed from runs cut short (`<candidate>@<epochs>`); variant 6's warm restart was also run for real
(`auto_vs_fixed.json` -> `variant6_real_runs`). Writes nothing: it prints the table.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

import numpy as np  # noqa: E402

from auto_vs_fixed import CODES, FIXED, ROWS  # noqa: E402
from transferkit.planning.race import budget_schedule, schedule_cost  # noqa: E402
from transferkit.planning.spec import EPOCH_COST, Rung  # noqa: E402
from transferkit.training.race.rules import Score, choose_survivors, score_outputs  # noqa: E402

CANDIDATES = ("freeze", "lpft-partial", "full-llrd", "lpft-full", "scratch")


def curve_outputs(curve: dict, upto: int) -> list[dict]:
    """The validation outputs of epochs 1..upto of a recorded curve (a solved head: its one epoch)."""
    label = [CODES.index(c) for c in curve["labels"]]
    return [{"pred": [CODES.index(c) for c in preds], "label": label} for preds in curve["preds"][:upto]]


def old_rule(curves: dict, alive: list[str], upto: int, keep: int) -> list[str]:
    """Issue 9's rule: accuracy within one binomial SE of the best, then the lowest loss (0.01 ties)."""
    import math as m

    n = len(curves[alive[0]]["labels"])
    scores = {}
    for name in alive:
        accs, losses = curves[name]["accs"][:upto][-2:], curves[name]["losses"][:upto][-2:]
        scores[name] = (statistics.fmean(accs), statistics.fmean(losses))
    chosen, left = [], dict(scores)
    while left and len(chosen) < keep:
        best = max(a for a, _ in left.values())
        p = min(max(best, 1 / n), 1 - 1 / n)
        contenders = {k: v for k, v in left.items() if v[0] >= best - m.sqrt(p * (1 - p) / n)}
        low = min(v[1] for v in contenders.values())
        tied = [k for k, v in contenders.items() if v[1] <= low + 0.01]
        pick = min(tied, key=lambda k: (CANDIDATES.index(k), left[k][1]))
        chosen.append(pick)
        del left[pick]
    return chosen


def new_rule(curves: dict, alive: list[str], upto: int, keep: int) -> list[str]:
    """The run's metric with a bootstrap SE (transferkit.training.race.rules.choose_survivors)."""
    scores = {name: score_outputs(curve_outputs(curves[name], upto)) for name in alive}
    return [v.name for v in choose_survivors(scores, keep) if v.kept]


def extrapolated_rule(curves: dict, alive: list[str], upto: int, keep: int) -> list[str]:
    """The metric plus the slope of its last four epochs carried to the end (learning-curve extrapolation)."""
    scores = {}
    for name in alive:
        accs = curves[name]["accs"][:upto]
        total = len(curves[name]["accs"])
        slope = np.polyfit(np.arange(len(accs[-4:])), accs[-4:], 1)[0] if len(accs) >= 3 else 0.0
        base = score_outputs(curve_outputs(curves[name], upto))
        scores[name] = Score(base.value + max(0.0, slope) * (total - len(accs)) * 0.5, base.replicates)
    return [v.name for v in choose_survivors(scores, keep) if v.kept]


def run_variant(curves: dict, rungs: list[Rung], rule: Callable, short: dict | None = None,
                field: tuple[str, ...] = CANDIDATES) -> tuple[str, list[list[str]]]:
    """One replayed race: the winner and who was alive after each cut. With `short` (name -> the curve
    of its run cut to the first rung's epochs, its schedule spanning them) the first cut scores those:
    a leg with a schedule of its own."""
    alive = [c for c in field if c in curves]
    paid = [c for c in alive if EPOCH_COST[c] > 0.1]
    history = []
    for k, rung in enumerate(rungs):
        if len(paid) > rung.keep:
            at_cut = {**curves, **short} if short is not None and k == 0 else curves
            paid = rule(at_cut, paid, rung.end, rung.keep)
        history.append(list(paid))
    finalists = [c for c in alive if EPOCH_COST[c] <= 0.1] + paid
    end = rungs[-1].end
    winner = rule(curves, finalists, end, 1)[0] if len(finalists) > 1 else finalists[0]
    return winner, history


def schedules(epochs: int, n_paid_costs: list[float]) -> dict[str, list[Rung]]:
    return {
        "old": [Rung(max(1, math.ceil(epochs / 9)), 2), Rung(max(1, math.ceil(epochs / 3)), 1), Rung(epochs, 1)],
        "budget-1": budget_schedule(epochs, n_paid_costs, keep=1),
        "budget-2": budget_schedule(epochs, n_paid_costs, keep=2),
        "none": no_cut(epochs, n_paid_costs),
        "restart-6": [Rung(6, 1), Rung(epochs, 1)],
        "field-4": budget_schedule(epochs, [0.05, 0.7, 1.0, 1.0], keep=2),
        "field-3": [Rung(epochs, 3)],
    }


def no_cut(epochs: int, costs: list[float]) -> list[Rung]:
    return [Rung(epochs, len(costs))]


# References, not rules (not counted): every candidate finishes and validation picks (3.75x the cost),
# and the candidate that tests best (what no validation-based rule can beat).
REFERENCES: list[tuple[str, str, Callable]] = [
    ("reference: no cut, the best validation score at the end (3.75x)", "none", new_rule),
]

# In the order they were tried: (name, schedule, rule).
VARIANTS: list[tuple[str, str, Callable]] = [
    ("issue-9 rule, cuts at E/9, E/3", "old", old_rule),
    ("metric + bootstrap SE, cuts at E/9, E/3", "old", new_rule),
    ("metric + bootstrap SE, one cut as late as 2.5x allows, keep 1", "budget-1", new_rule),
    ("metric + bootstrap SE, one cut as late as 2.5x allows, keep 2", "budget-2", new_rule),
    ("extrapolated metric, one cut as late as 2.5x allows, keep 1", "budget-1", extrapolated_rule),
    ("metric + bootstrap SE, legs with their own schedules, one cut as late as 2.5x allows (8 of 15), keep 1",
     "budget-1", new_rule),
    ("metric + bootstrap SE, legs with their own schedules, cut at 6 of 15, keep 1 (the winner trains again)",
     "restart-6", new_rule),
    ("without lpft-full: metric + bootstrap SE, one cut as late as 2.5x allows keeping 2", "field-4", new_rule),
    ("freeze, full-llrd, scratch only: no cut (2.05x), metric + bootstrap SE at the end", "field-3", new_rule),
]
FIELDS = {"field-4": ("freeze", "lpft-partial", "full-llrd", "scratch"), "field-3": ("freeze", "full-llrd", "scratch")}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--curves", type=Path, default=REPO / "benchmarks" / "results" / "auto_vs_fixed.curves.json")
    parser.add_argument("--results", type=Path, default=REPO / "benchmarks" / "results" / "auto_vs_fixed.json")
    parser.add_argument("--rows", nargs="+", default=[r for r, s in ROWS.items() if s["role"] == "design"])
    parser.add_argument("--variants", nargs="+", default=None, help="their numbers (1-based) in VARIANTS")
    args = parser.parse_args(argv)
    curves, runs = json.loads(args.curves.read_text()), json.loads(args.results.read_text())["runs"]
    test = {(r["row"], r["strategy"], r["seed"]): r["test_acc"] for r in runs}
    chosen = [VARIANTS[int(v) - 1] for v in args.variants] if args.variants else VARIANTS + REFERENCES
    for title, schedule_name, rule in chosen:
        print(f"\n== {title}")  # noqa: T201 - a design script's output
        gaps = []
        for row in args.rows:
            seeds = sorted({int(k.split("/")[2]) for k in curves if k.startswith(f"{row}/")})
            autos, fixed = [], {s: [] for s in FIXED}
            picks, bloom = [], []
            for seed in seeds:
                row_curves = {c: curves[f"{row}/{c}/{seed}"] for c in CANDIDATES if f"{row}/{c}/{seed}" in curves}
                if len(row_curves) < len(CANDIDATES) or not all((row, s, seed) in test for s in FIXED):
                    continue
                epochs = len(row_curves["full-llrd"]["accs"])
                costs = [EPOCH_COST[c] for c in row_curves]
                rungs = schedules(epochs, costs)[schedule_name]
                short = None
                if "own schedules" in title:
                    short = {c: curves.get(f"{row}/{c}@{rungs[0].end}/{seed}") for c in row_curves if c != "freeze"}
                    if not all(short.values()):
                        continue
                winner, history = run_variant(row_curves, rungs, rule, short, FIELDS.get(schedule_name, CANDIDATES))
                autos.append(test[(row, winner, seed)])
                for s in FIXED:
                    fixed[s].append(test[(row, s, seed)])
                best_alone = max(FIELDS.get(schedule_name, CANDIDATES), key=lambda c: test.get((row, c, seed), -1))
                picks.append(winner)
                bloom.append(best_alone in history[0] or best_alone == "freeze")
            if not autos:
                continue
            best = max(FIXED, key=lambda s: statistics.fmean(fixed[s]))
            diffs = [a - b for a, b in zip(autos, fixed[best])]
            gap = -statistics.fmean(diffs)
            se = statistics.stdev(diffs) / len(diffs) ** 0.5 if len(diffs) > 1 else 0.0
            gaps.append(gap)
            bound = schedule_cost(rungs, [EPOCH_COST[c] for c in FIELDS.get(schedule_name, CANDIDATES)]) / epochs
            print(f"{row:15s} auto {100 * statistics.fmean(autos):5.1f}  best fixed {best:8s} "  # noqa: T201
                  f"{100 * statistics.fmean(fixed[best]):5.1f}  gap {100 * gap:+5.1f} (SE {100 * se:.1f})  "
                  f"picks {','.join(picks)}  best-alone survives first cut {sum(bloom)}/{len(bloom)}  "
                  f"rungs {[(r.end, r.keep) for r in rungs]} bound {bound:.2f}x")
        if gaps:
            print(f"mean gap {100 * statistics.fmean(gaps):+.2f} pt over {len(gaps)} rows")  # noqa: T201
    print("\n== reference: the candidate that tests best, per seed")  # noqa: T201
    for row in args.rows:
        seeds = sorted({r["seed"] for r in runs if r["row"] == row})
        best = {s: max((test.get((row, c, s), -1), c) for c in CANDIDATES) for s in seeds}
        fixed = {f: [test[(row, f, s)] for s in seeds if (row, f, s) in test] for f in FIXED}
        means = {f: statistics.fmean(v) for f, v in fixed.items() if v}
        print(f"{row:15s} best candidate {100 * statistics.fmean(b[0] for b in best.values()):5.1f} "  # noqa: T201
              f"({','.join(b[1] for b in best.values())}); fixed means "
              + " ".join(f"{f} {100 * m:.1f}" for f, m in means.items()))


if __name__ == "__main__":
    main()
