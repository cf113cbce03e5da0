"""How should `finetune=auto` turn its finishers into the run's model? Round 3 of issue 22's design.

The race's field (freeze, full-llrd, scratch) trains to the end on every row, and each candidate
trains exactly as that plan alone would (tested), so the race's outcome under any rule can be
replayed from the candidates trained alone: this script trains them (`--train`, as
`auto_vs_fixed.py` runs them, 3 seeds) and keeps each one's uncalibrated validation and test
probabilities (`<members>/<row>-<candidate>-s<seed>.npz`), then replays thirteen rules on them and
writes `benchmarks/results/ensemble_design.{json,md}`. The gap of a rule is its test accuracy minus
the best of the three candidates' (mean over seeds), per row; the rule was chosen on the mean and the
worst gap over these nine DESIGN rows, before round 3's report rows ran.

    python benchmarks/ensemble_design.py --train --members /tmp/members   # trains 9 rows x 3 x 3 (hours on 2 cores)
    python benchmarks/ensemble_design.py --members /tmp/members           # replays the rules only
"""

from __future__ import annotations

import argparse
import datetime
import json
import logging
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))

import auto_vs_fixed as avf  # noqa: E402 - benchmarks/ is not a package

log = logging.getLogger("ensemble_design")
CANDIDATES = ("freeze", "full-llrd", "scratch")
DESIGN_ROWS = ("sources", "textures", "fonts", "areas", "symbols", "textures-large", "sources-large",
               "areas-large", "symbols-large")
BOOTSTRAP = 1000


def train(rows: list[str], seeds: list[int], members: Path, sets_dir: Path) -> None:
    """Each candidate trained alone, its best checkpoint's probabilities on val and test kept."""
    from transferkit.inference.predictor import probabilities, task_predictor
    from transferkit.tasks.loading import load_model

    members.mkdir(parents=True, exist_ok=True)
    for row in rows:
        root = avf.photo_sets.build_set(avf.ROWS[row]["set"], sets_dir)
        files = {split: sorted((root / split).rglob("*.png")) for split in ("val", "test")}
        classes = sorted(p.name for p in (root / "train").iterdir())
        for seed in seeds:
            for name in CANDIDATES:
                out = members / f"{row}-{name}-s{seed}.npz"
                if out.exists():
                    continue
                record, _ = avf.run_one(row, name, seed, sets_dir, members / "runs", False)
                best = next((members / "runs" / f"{row}-{name}-s{seed}").rglob("best.ckpt"))
                predictor = task_predictor(load_model([str(best)], "none"), "none")  # uncalibrated
                arrays = {}
                for split, paths in files.items():
                    probs, _ = probabilities(predictor, paths, 64, 0)
                    arrays[split] = np.stack([probs[i] for i in range(len(paths))])
                    arrays[f"{split}_y"] = np.array([classes.index(p.parent.name) for p in paths])
                np.savez(out, **arrays, test_acc=record["test_acc"])
                log.info("%s/%s seed %d: test acc %.4f", row, name, seed, record["test_acc"])


def accuracy(probs: np.ndarray, labels: np.ndarray) -> float:
    return float((probs.argmax(1) == labels).mean())


def nll(probs: np.ndarray, labels: np.ndarray) -> float:
    return float(-np.log(np.clip(probs[np.arange(len(labels)), labels], 1e-9, 1)).mean())


def mean_of(m: dict, names, split: str) -> np.ndarray:
    return np.mean([m[n][split] for n in names], axis=0)


def geometric(m: dict, names, split: str) -> np.ndarray:
    return np.exp(np.mean([np.log(np.clip(m[n][split], 1e-9, 1)) for n in names], axis=0))


SUBSETS = [(n,) for n in CANDIDATES] + [CANDIDATES[:2], (CANDIDATES[0], CANDIDATES[2]), CANDIDATES[1:], CANDIDATES]


def within(m: dict, k: float, paired: bool, rng: np.random.Generator) -> tuple[str, ...]:
    """The finishers within k SEs of the best on validation accuracy: paired bootstrap SE of the
    difference, or the binomial SE of the best's accuracy."""
    labels = m[CANDIDATES[0]]["val_y"]
    right = {n: (m[n]["val"].argmax(1) == labels).astype(float) for n in CANDIDATES}
    acc = {n: right[n].mean() for n in CANDIDATES}
    best = max(CANDIDATES, key=lambda n: (acc[n], -CANDIDATES.index(n)))
    index = np.random.default_rng(0).integers(0, len(labels), size=(BOOTSTRAP, len(labels)))  # as the race: seed 0
    keep = []
    for n in CANDIDATES:
        if paired:
            se = float(np.std(right[best][index].mean(1) - right[n][index].mean(1), ddof=1))
        else:
            se = float(np.sqrt(acc[best] * (1 - acc[best]) / len(labels)))
        if acc[best] - acc[n] <= k * se:
            keep.append(n)
    return tuple(keep)


def rules() -> dict[str, Callable[[dict, np.random.Generator], float]]:
    """Each rule: the members' probabilities of one row and seed -> its test accuracy."""
    def pick(score: Callable[[dict, tuple], float], combine=mean_of, among=SUBSETS):
        def rule(m: dict, rng) -> float:
            chosen = max(among, key=lambda names: (score(m, names), -len(names)))
            return accuracy(combine(m, chosen, "test"), m[CANDIDATES[0]]["test_y"])
        return rule

    def fixed(names, combine=mean_of):
        return lambda m, rng: accuracy(combine(m, names, "test"), m[CANDIDATES[0]]["test_y"])

    def kept(k: float, paired: bool):
        return lambda m, rng: accuracy(mean_of(m, within(m, k, paired, rng), "test"), m[CANDIDATES[0]]["test_y"])

    val_acc = lambda m, names: accuracy(mean_of(m, names, "val"), m[CANDIDATES[0]]["val_y"])  # noqa: E731
    val_nll = lambda m, names: -nll(mean_of(m, names, "val"), m[CANDIDATES[0]]["val_y"])  # noqa: E731
    singles = [(n,) for n in CANDIDATES]
    return {
        "the best single on val accuracy (rule 10)": pick(val_acc, among=singles),
        "the best single on val NLL": pick(val_nll, among=singles),
        "mean of all finishers": fixed(CANDIDATES),
        "geometric mean of all finishers": fixed(CANDIDATES, geometric),
        "mean of freeze and full-llrd": fixed(CANDIDATES[:2]),
        "the subset with the best val accuracy": pick(val_acc),
        "the subset with the best val NLL": pick(val_nll),
        "mean of those within 1 paired SE of the best": kept(1, True),
        "mean of those within 2 paired SE of the best (chosen)": kept(2, True),
        "mean of those within 3 paired SE of the best": kept(3, True),
        "mean of those within 1 binomial SE of the best": kept(1, False),
        "mean of those within 2 binomial SE of the best": kept(2, False),
        "mean of those within 3 binomial SE of the best": kept(3, False),
    }


def replay(members: Path, rows: list[str]) -> dict:
    rng = np.random.default_rng(0)
    table: dict[str, dict] = {}
    for row in rows:
        seeds = sorted({int(p.stem.rsplit("-s", 1)[1]) for p in members.glob(f"{row}-freeze-s*.npz")})
        by_seed = {s: {n: dict(np.load(members / f"{row}-{n}-s{s}.npz")) for n in CANDIDATES} for s in seeds}
        if not by_seed:
            continue
        alone = {n: float(np.mean([accuracy(m[n]["test"], m[n]["test_y"]) for m in by_seed.values()]))
                 for n in CANDIDATES}
        best = max(alone.values())
        scores = {name: float(np.mean([rule(m, rng) for m in by_seed.values()])) for name, rule in rules().items()}
        table[row] = {"seeds": seeds, "candidates": alone,
                      "rules": {k: {"test_acc": v, "gap": v - best} for k, v in scores.items()}}
    summary = {name: {"mean_gap": float(np.mean([t["rules"][name]["gap"] for t in table.values()])),
                      "worst_gap": float(np.min([t["rules"][name]["gap"] for t in table.values()]))}
               for name in rules()}
    return {"date": datetime.date.today().isoformat(), "rows": table, "summary": summary,
            "role": "design rows only: the rule was chosen on these, before round 3's report rows ran",
            "gap": "rule's test accuracy minus the best single candidate's, mean over seeds"}


def markdown(record: dict) -> str:
    lines = ["| rule (replayed on the 9 design rows) | mean gap | worst gap | worst row |", "|---|---|---|---|"]
    for name, s in record["summary"].items():
        worst = min(record["rows"], key=lambda r: record["rows"][r]["rules"][name]["gap"])
        lines.append(f"| {name} | {100 * s['mean_gap']:+.2f} pt | {100 * s['worst_gap']:+.2f} pt | {worst} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--members", type=Path, required=True, help="where the candidates' probabilities are")
    parser.add_argument("--train", action="store_true", help="train the missing candidates first")
    parser.add_argument("--rows", nargs="+", default=list(DESIGN_ROWS))
    parser.add_argument("--seeds", nargs="+", type=int, default=[42, 1, 2])
    parser.add_argument("--sets-dir", type=Path, default=Path("/tmp/photo_sets"))
    parser.add_argument("--output", type=Path, default=REPO / "benchmarks" / "results" / "ensemble_design.json")
    args = parser.parse_args(argv)
    if args.train:
        import torch

        torch.set_num_threads(1)
        train(args.rows, args.seeds, args.members, args.sets_dir)
    record = replay(args.members, args.rows)
    args.output.write_text(json.dumps(record, indent=1) + "\n")
    args.output.with_suffix(".md").write_text(markdown(record))
    log.info("\n%s", markdown(record))


if __name__ == "__main__":
    main()
