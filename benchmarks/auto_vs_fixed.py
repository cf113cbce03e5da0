"""Does `finetune=auto` (the race) find the best model? Auto against every fixed strategy (issues 9, 22).

Rows: real photographs and font renders the race was not developed on (`benchmarks/photo_sets.py`:
crops split by region of the source photo, fonts split by character or font), through
`recipe=small_similar model.weights=charnet` as a new user would; and the six rows of the first
benchmark (embedded quadrant sets, 10- and 5-per-class digits), which shaped the earlier rules.
Every row is a DESIGN row (the race's rule was tuned on it) or a REPORT row (run once, after the
rule was frozen): `ROWS[row]["role"]`.

Columns: `freeze`, `partial`, `full`, `scratch` (the same architecture and input format from random
init, `finetune=full`, backbone LR x 1) and `auto`, every cell over the same seeds; every record
carries the fingerprint of the source tree it ran in. "Within SE" is within the standard error of the
paired per-seed differences (auto minus the best fixed strategy, same seed). A row's late bloomer is
its best fixed strategy when it trails at the old race's first cut (epoch ceil(E/9)); it survives when
one of its candidates (`COUNTERPARTS`) finishes every auto run. The race's own candidates trained alone
(`lpft-partial`, `full-llrd`, `lpft-full`) are the design curves (`--strategies ... --curves`):
with `--curves` every run also keeps its validation predictions per epoch in `auto_vs_fixed.curves.json`,
which `benchmarks/race_design.py` replays rules on.

    python benchmarks/auto_vs_fixed.py --rows sources textures             # those rows, 3 seeds
    python benchmarks/auto_vs_fixed.py --rows sources --strategies freeze full-llrd scratch --curves
    python benchmarks/auto_vs_fixed.py --table                             # only rewrite the table

Torch runs on one thread (`torch.set_num_threads(1)`): on a shared 2-core machine two threads spin
against other jobs (7x slower), and every cell runs the same way. Writes
`benchmarks/results/auto_vs_fixed.json` (every run, appended as it finishes; an interrupted benchmark
resumes) and `auto_vs_fixed.md` (the table README quotes).
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import json
import logging
import os
import platform
import statistics
import string
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))

import photo_sets  # noqa: E402 - benchmarks/ is not a package

log = logging.getLogger("auto_vs_fixed")
RESULTS = REPO / "benchmarks" / "results"
# Per row: the recipe, epochs for every strategy, the photo set or extra overrides, and its role.
ROWS: dict[str, dict] = {
    "sources": {"recipe": "small_similar", "epochs": 15, "set": "sources", "role": "design"},
    "textures": {"recipe": "small_similar", "epochs": 15, "set": "textures", "role": "design"},
    "fonts": {"recipe": "small_similar", "epochs": 15, "set": "fonts", "role": "design"},
    # Report rows of rounds 1 and 2. Round 2's areas rows missed, so round 3's method (the ensemble of the
    # finishers) was chosen on all nine rows above and below: they are design rows since.
    "areas": {"recipe": "small_similar", "epochs": 15, "set": "areas", "role": "design", "was_report_in_round": 1,
              "missed": True},
    "symbols": {"recipe": "small_similar", "epochs": 15, "set": "symbols", "role": "design", "was_report_in_round": 1},
    "textures-large": {"recipe": "small_similar", "epochs": 15, "set": "textures-large", "role": "design",
                       "was_report_in_round": 1},
    # A report row of round 1 that missed (auto 1.2 pt behind, paired SE 1.0): a design row since.
    "sources-large": {"recipe": "small_similar", "epochs": 15, "set": "sources-large", "role": "design",
                      "was_report_in_round": 1, "missed": True},
    "areas-large": {"recipe": "small_similar", "epochs": 15, "set": "areas-large", "role": "design",
                    "was_report_in_round": 2, "missed": True},
    "symbols-large": {"recipe": "small_similar", "epochs": 15, "set": "symbols-large", "role": "design",
                      "was_report_in_round": 2},
    # Round 3's fresh report rows, built and run once after the round-3 method was frozen.
    "sources-r3": {"recipe": "small_similar", "epochs": 15, "set": "sources-r3", "role": "report", "round": 3},
    "textures-r3": {"recipe": "small_similar", "epochs": 15, "set": "textures-r3", "role": "report", "round": 3},
    "areas-r3": {"recipe": "small_similar", "epochs": 15, "set": "areas-r3", "role": "report", "round": 3},
    "fonts-r3": {"recipe": "small_similar", "epochs": 15, "set": "fonts-r3", "role": "report", "round": 3},
    # The first benchmark's rows: they shaped the earlier rules, so they are design rows.
    "digits": {"recipe": "small_similar", "epochs": 9, "extra": [], "role": "design"},
    "digits-10pc": {"recipe": "small_similar", "epochs": 15, "extra": ["data.train_per_class=10"], "role": "design"},
    "digits-5pc": {"recipe": "small_similar", "epochs": 15, "extra": ["data.train_per_class=5"], "role": "design"},
    "shapes-small": {"recipe": "small_different", "epochs": 15, "extra": [], "role": "design"},
    "synthdigits": {"recipe": "large_similar", "epochs": 9, "extra": ["data.embedded_length=1500"], "role": "design"},
    "shapes-large": {"recipe": "large_different", "epochs": 9, "extra": ["data.embedded_length=1000"],
                     "role": "design"},
}
PHOTO_ROWS = tuple(r for r, spec in ROWS.items() if "set" in spec)
STRATEGIES: dict[str, list[str]] = {
    "freeze": ["finetune=freeze"],
    "partial": ["finetune=partial"],
    "full": ["finetune=full"],
    "scratch": ["finetune=full", "finetune.backbone_lr_scale=1.0"],  # + random init: scratch_overrides
    "auto": ["finetune=auto"],
    # The race's candidates trained alone (the design curves): as transferkit.planning.race builds them.
    "lpft-partial": ["finetune=partial", "finetune.lpft=true"],
    "full-llrd": ["finetune=full", "finetune.backbone_lr_scale=1.0", "finetune.layer_decay=0.75"],
    "lpft-full": ["finetune=full", "finetune.lpft=true"],
    "freeze-sgd": ["finetune=freeze", "finetune.head_solver=sgd"],  # the head by SGD epochs (issue 9)
}
FIXED = ("freeze", "partial", "full", "scratch")
DEFAULT_STRATEGIES = (*FIXED, "auto")
# The house backbone's input format without its weights: scratch on a folder sees what the others see.
CHARNET_FORMAT = ["model.in_chans=1", "data.image_size=32", "data.mean=[0.449]", "data.std=[0.226]",
                  "data.interpolation=bilinear"]
COMMON = ["data.num_workers=0", "trainer.accelerator=cpu", "trainer.devices=1",
          "trainer.enable_progress_bar=false", "trainer.enable_model_summary=false"]
SEEDS = (42, 1, 2, 3, 4, 5, 6)
CODES = string.digits + string.ascii_letters  # a predicted class per character in the curves file


def source_fingerprint() -> str:
    """A digest of the package, conf/ and recipes/ as they ran: cells with the same one ran the same code."""
    digest = hashlib.sha1()
    for folder in ("transferkit", "conf", "recipes"):
        for path in sorted((REPO / folder).rglob("*")):
            if path.suffix in (".py", ".yaml", ".json") and "__pycache__" not in path.parts:
                digest.update(str(path.relative_to(REPO)).encode() + path.read_bytes())
    return digest.hexdigest()[:12]


def scratch_overrides(row: str) -> list[str]:
    return ["model=charnet", "model.weights=none", *CHARNET_FORMAT] if row in PHOTO_ROWS else ["model.weights=none"]


def run_overrides(row: str, strategy: str, seed: int, sets_dir: Path, run_dir: Path) -> list[str]:
    spec = ROWS[row]
    data = ([f"data.root={photo_sets.build_set(spec['set'], sets_dir)}", "model.weights=charnet"]
            if "set" in spec else list(spec["extra"]))
    if strategy.partition("@")[0] == "scratch":
        data = [d for d in data if d != "model.weights=charnet"] + scratch_overrides(row)
    epochs = spec["epochs"]
    strategy, _, short = strategy.partition("@")  # full-llrd@8: the candidate's run cut to 8 epochs (its
    # schedule spans them: what a race leg with a schedule of its own would score)
    return [f"recipe={spec['recipe']}", *STRATEGIES[strategy], f"trainer.max_epochs={short or epochs}",
            f"scheduler.warmup_epochs={min(0.2 * epochs, 1.0):g}", f"seed={seed}", *data, *COMMON,
            f"run_dir={run_dir}"]


def run_one(row: str, strategy: str, seed: int, sets_dir: Path, root: Path, curves: bool) -> tuple[dict, dict]:
    """One fit as `python -m transferkit fit` runs it; with `curves` its validation predictions per epoch."""
    from transferkit.cli.compose import compose_config
    from transferkit.planning.plan import RunPlan
    from transferkit.training.race.validation import ValidationRecorder
    from transferkit.training.session import train_and_test

    overrides = run_overrides(row, strategy, seed, sets_dir, root / f"{row}-{strategy}-s{seed}")
    class CurveRecorder(ValidationRecorder):
        """Every epoch's predictions, never rolled back (testing restores best.ckpt's callback states)."""

        def load_state_dict(self, state_dict: dict) -> None:
            pass

    recorder = CurveRecorder(keep_outputs=None)
    start = time.time()
    plan = RunPlan(compose_config(overrides), "fit")
    results, *_ = train_and_test(plan.spec, plan.datamodule, callbacks=[recorder] if curves and strategy != "auto"
                                 else None)
    auto = results.get("auto") or {}
    record = {"row": row, "strategy": strategy, "seed": seed, "test_acc": results["metrics"]["test/acc"],
              "wall_seconds": round(time.time() - start, 1), "train_size": results["data"]["train_size"],
              "val_size": results["data"]["val_size"], "winner": auto.get("winner"),
              "epochs": epoch_equivalents(auto) if auto else int(strategy.partition("@")[2] or ROWS[row]["epochs"]),
              "overrides": overrides,
              "race": {k: auto.get(k) for k in ("rungs", "candidates", "cost_bound", "rule")} if auto else None,
              "source": source_fingerprint()}
    curve = {}
    if recorder.outputs:
        curve = {"labels": "".join(CODES[v] for v in recorder.outputs[0]["label"]), "accs": recorder.accs,
                 "losses": recorder.losses, "preds": ["".join(CODES[v] for v in o["pred"]) for o in recorder.outputs]}
    log.info("%s/%s seed %d: test/acc %.4f in %.0f s%s", row, strategy, seed, record["test_acc"],
             record["wall_seconds"], f" (winner {record['winner']})" if record["winner"] else "")
    return record, curve


def ensemble_members(run: dict) -> list[str] | None:
    """The finishers an auto run averaged (finetune.combine=ensemble, from its race record's final
    verdicts as transferkit.training.race.ensemble decides them); None for a run of an earlier round."""
    from transferkit.training.race.ensemble import is_member

    race = run.get("race") or {}
    if "round" not in ROWS[run["row"]] or ROWS[run["row"]]["round"] < 3 or not race.get("candidates"):
        return None
    end = race["rungs"][-1]["end"]
    return [c["name"] for c in race["candidates"] if c["rungs"] and c["rungs"][-1]["epochs"] == end
            and is_member(c["name"], run["winner"], c["rungs"][-1].get("verdict"))]


def epoch_equivalents(auto: dict) -> float:
    """What the race trained, in epochs of the slowest fixed strategy: each candidate's epochs x its cost."""
    from transferkit.planning.spec import EPOCH_COST

    return round(sum(EPOCH_COST[c["name"]] * c["rungs"][-1]["epochs"] for c in auto["candidates"] if c["rungs"]), 2)


def stats(values: list[float]) -> dict:
    mean = statistics.fmean(values)
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return {"mean": mean, "std": std, "se": std / len(values) ** 0.5, "n": len(values)}


def paired(auto: dict[int, float], other: dict[int, float]) -> dict:
    """auto minus a strategy, seed by seed: the mean difference and its standard error."""
    seeds = sorted(set(auto) & set(other))
    diffs = [auto[s] - other[s] for s in seeds]
    return {**stats(diffs), "seeds": seeds} if diffs else {}


# The race's candidates that stand for a fixed strategy (a late bloomer survives if one of them finishes).
COUNTERPARTS = {"freeze": ("freeze",), "partial": ("lpft-partial",), "full": ("full-llrd", "lpft-full"),
                "scratch": ("scratch",)}


def validation_pick(row: str, runs: list[dict], curves: dict) -> dict | None:
    """What choosing among the FIXED strategies by validation alone gives, seed by seed: the one whose
    last two validation accuracies score best (as the race scores; freeze has one) and its test
    accuracy. Where it misses the best fixed strategy too, no rule that selects on the validation
    split can meet the target on that row: validation and test disagree."""
    tests = {(r["strategy"], r["seed"]): r["test_acc"] for r in runs if r["row"] == row}
    picks, accs = [], []
    for seed in sorted({seed for (_, seed) in tests}):
        val = {s: statistics.fmean(curves[f"{row}/{s}/{seed}"]["accs"][-2:]) for s in FIXED
               if f"{row}/{s}/{seed}" in curves and (s, seed) in tests}
        if len(val) < len(FIXED):
            return None
        pick = max(val, key=val.get)
        picks.append(pick)
        accs.append(tests[(pick, seed)])
    return {"mean": statistics.fmean(accs), "picks": picks} if accs else None


def late_bloomer(row: str, best: str, runs: list[dict], curves: dict) -> dict | None:
    """Whether the best fixed strategy trails at the old race's first cut (epoch ceil(E/9), its score
    the mean validation accuracy of its last two epochs there, averaged over seeds), and whether the
    race let one of its candidates finish (every auto run of the row)."""
    first = max(1, -(-ROWS[row]["epochs"] // 9))
    early = {}
    for strategy in FIXED:
        scores = [statistics.fmean(c["accs"][:first][-2:]) for k, c in curves.items()
                  if k.startswith(f"{row}/{strategy}/")]
        if scores:
            early[strategy] = statistics.fmean(scores)
    if best not in early or len(early) < 2:
        return None
    trails = early[best] < max(v for s, v in early.items() if s != best)
    finished = [any(c["name"] in COUNTERPARTS[best] and c["rungs"] and c["rungs"][-1]["epochs"] == ROWS[row]["epochs"]
                    for c in (r.get("race") or {}).get("candidates") or []) for r in runs
                if r["row"] == row and r["strategy"] == "auto"]
    return {"strategy": best, "first_cut": first, "early": early, "trails": trails,
            "survives": bool(finished) and all(finished)}


def summarise(runs: list[dict], curves: dict | None = None) -> dict:
    """Per row: each strategy's accuracy over seeds, auto's paired differences and verdicts."""
    cells: dict[str, dict[str, dict]] = {}
    for run in runs:
        cell = cells.setdefault(run["row"], {}).setdefault(run["strategy"], {"acc": {}, "wall": [], "epochs": [],
                                                                             "winners": []})
        cell["acc"][run["seed"]] = run["test_acc"]
        cell["wall"].append(run["wall_seconds"])
        cell["epochs"].append(run.get("epochs", ROWS[run["row"]]["epochs"]))
        if run.get("winner"):
            cell["winners"].append(run["winner"])
            cell.setdefault("members", []).append(ensemble_members(run))
    summary = {}
    for row, by in cells.items():
        out = {s: {**stats(list(c["acc"].values())), "wall": statistics.fmean(c["wall"]),
                   "epochs": statistics.fmean(c["epochs"]), "winners": c["winners"], "by_seed": c["acc"],
                   "members": c.get("members", [])}
               for s, c in by.items()}
        fixed = {s: out[s] for s in FIXED if s in out}
        if "auto" in out and fixed:
            best = max(fixed, key=lambda s: fixed[s]["mean"])
            vs = {s: paired(by["auto"]["acc"], by[s]["acc"]) for s in fixed}
            gap = fixed[best]["mean"] - out["auto"]["mean"]
            allowed = max(0.01, vs[best].get("se", 0.0))
            scratch_ok = "scratch" not in fixed or out["auto"]["mean"] >= fixed["scratch"]["mean"] - 0.01
            slowest = max(fixed, key=lambda s: fixed[s]["wall"])
            out["verdict"] = {"best_fixed": best, "gap": gap, "allowed": allowed, "ok": gap <= allowed and scratch_ok,
                              "not_below_scratch": scratch_ok, "paired": vs,
                              "epochs_ratio": out["auto"]["epochs"] / max(f["epochs"] for f in fixed.values()),
                              "wall_ratio": out["auto"]["wall"] / fixed[slowest]["wall"],
                              "late_bloomer": late_bloomer(row, best, runs, curves or {}),
                              "validation_pick": validation_pick(row, runs, curves or {})}
        summary[row] = out
    return summary


def role_text(row: str) -> str:
    """`design`, `report (round N)`, or a design row that was a report row until it missed."""
    spec = ROWS[row]
    if "was_report_in_round" in spec:
        why = "missed" if spec.get("missed") else "seen when round 3's method was chosen"
        return f"design (report row of round {spec['was_report_in_round']}; {why})"
    return f"{spec['role']} (round {spec['round']})" if "round" in spec else spec["role"]


def markdown(summary: dict, rules_tried: int | None) -> str:
    names = [s for s in DEFAULT_STRATEGIES if any(s in cells for cells in summary.values())]
    lines = ["| data | role | " + " | ".join(names) + " | auto's picks | auto − best (paired SE) | within max(1 pt, SE) "
             "| best trails at the first cut? finishes in auto? | best fixed on validation: its test acc | auto epochs / slowest fixed "
             "| auto wall / slowest fixed |",
             "|---|---|" + "---|" * (len(names) + 7)]
    gaps: dict[str, list[float]] = {}
    for row in [r for r in ROWS if r in summary]:
        cells = summary[row]
        best = max((cells[s]["mean"] for s in names if s in cells and s != "auto"), default=None)
        parts = []
        for s in names:
            if s not in cells:
                parts.append("–")
                continue
            text = f"{100 * cells[s]['mean']:.1f} ± {100 * cells[s]['std']:.1f}"
            parts.append(f"**{text}**" if best is not None and cells[s]["mean"] >= best and s != "auto" else text)
        v = cells.get("verdict")
        picks = ", ".join(sorted(set(cells.get("auto", {}).get("winners", [])))) or "–"
        members = [m for m in cells.get("auto", {}).get("members", []) if m]
        if any(len(m) > 1 for m in members):  # finetune.combine=ensemble: each seed's members
            picks += " (ensembles: " + "; ".join("+".join(m) for m in members) + ")"
        if v:
            gaps.setdefault(ROWS[row]["role"], []).append(v["gap"])
            se = v["paired"][v["best_fixed"]].get("se", 0.0)
            gap = f"{-100 * v['gap']:+.1f} ({100 * se:.1f})"
            ok = ("yes" if v["ok"] else "no") + ("" if v["not_below_scratch"] else ", below scratch − 1")
            ratios = f"{v['epochs_ratio']:.2f}× | {v['wall_ratio']:.2f}×"
            late = v.get("late_bloomer")
            bloom = "–" if not late else (f"{late['strategy']}: {'yes' if late['trails'] else 'no'} "
                                          f"(epoch {late['first_cut']}), {'yes' if late['survives'] else 'no'}")
            pick = v.get("validation_pick")
            on_val = "–" if not pick else f"{100 * pick['mean']:.1f} ({', '.join(sorted(set(pick['picks'])))})"
        else:
            gap, ok, ratios, bloom, on_val = "–", "–", "– | –", "–", "–"
        lines.append(f"| {row} | {role_text(row)} | " + " | ".join(parts)
                     + f" | {picks} | {gap} | {ok} | {bloom} | {on_val} | {ratios} |")
    text = "\n".join(lines)
    for role, values in gaps.items():
        text += (f"\n\nMean gap, best fixed strategy minus auto, over the {len(values)} {role} rows: "
                 f"{100 * statistics.fmean(values):+.2f} points.")
    if rules_tried is not None:
        text += f"\n\nRace rules tried on the design rows before the report rows ran: {rules_tried}."
    return text + "\n"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", nargs="+", default=list(PHOTO_ROWS), choices=list(ROWS))
    parser.add_argument("--strategies", nargs="+", default=list(DEFAULT_STRATEGIES),
                        help=f"of {list(STRATEGIES)}; <strategy>@<epochs>: cut short, its schedule spanning those epochs")
    parser.add_argument("--seeds", type=int, default=3, help="seeds 42, 1, 2, ... (initialisation, batch order)")
    parser.add_argument("--curves", action="store_true", help="keep validation predictions per epoch")
    parser.add_argument("--sets-dir", type=Path, default=Path(tempfile.gettempdir()) / "photo_sets")
    parser.add_argument("--runs-dir", type=Path, default=None)
    parser.add_argument("--output", type=Path, default=RESULTS / "auto_vs_fixed.json")
    parser.add_argument("--rules-tried", type=int, default=None, help="stated under the table")
    parser.add_argument("--table", action="store_true", help="only rewrite the summary and table")
    parser.add_argument("--redo", action="store_true", help="run the selected cells again, replacing their records")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    args = parse_args(argv)
    unknown = [s for s in args.strategies if s.partition("@")[0] not in STRATEGIES]
    if unknown:
        raise SystemExit(f"--strategies {unknown}: use {list(STRATEGIES)}, optionally with @<epochs>")
    import torch

    torch.set_num_threads(1)
    root = args.runs_dir or Path(tempfile.mkdtemp(prefix="auto_vs_fixed-"))
    curves_path = args.output.with_suffix(".curves.json")
    record = json.loads(args.output.read_text()) if args.output.is_file() else {"runs": []}
    curves = json.loads(curves_path.read_text()) if curves_path.is_file() else {}
    jobs = [] if args.table else [(r, s, seed) for r in args.rows for seed in SEEDS[:args.seeds]
                                  for s in args.strategies]
    if args.redo:
        again = set(jobs)
        record["runs"] = [r for r in record["runs"] if (r["row"], r["strategy"], r["seed"]) not in again]
    done = {(r["row"], r["strategy"], r["seed"]) for r in record["runs"]}
    start = time.time()
    for job in jobs:
        if job in done:
            continue
        run, curve = run_one(*job, args.sets_dir, root, args.curves)
        record["runs"].append(run)
        record.update({"date": datetime.date.today().isoformat(), "rows": ROWS, "common_overrides": COMMON,
                       "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, torch threads 1"})
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(json.dumps(record, indent=1) + "\n")
        if curve:
            curves["/".join(map(str, job))] = curve
            curves_path.write_text(json.dumps(curves) + "\n")
    record["rules_tried"] = args.rules_tried if args.rules_tried is not None else record.get("rules_tried")
    record["summary"] = summarise(record["runs"], curves)
    args.output.write_text(json.dumps(record, indent=1) + "\n")
    table = markdown(record["summary"], record["rules_tried"])
    args.output.with_suffix(".md").write_text(table)
    log.info("\n%s\nthis invocation: %.0f s; wrote %s", table, time.time() - start, args.output)


if __name__ == "__main__":
    main()
