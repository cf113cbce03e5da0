"""`finetune=auto`'s plan: which candidates race, where the cuts fall, and the worst-case cost (pure).

Planning decides the race (`plan_race`, or `plan_from_record` for a race stopped mid-way); the runner
that trains its legs and the elimination rule live in `transferkit.training.race`.
"""

from __future__ import annotations

import math

from transferkit.config.files import load_group_option
from transferkit.errors import ConfigError
from transferkit.training.race.rules import ETA, Candidate, RacePlan, Rung

SCRATCH_UNLESS_SIMILARITY = 0.9  # scratch is ruled out only when frozen features already separate the classes
LAYER_DECAY = 0.75          # full-llrd: each lower backbone group gets 0.75x the LR of the one above


def scratch_enters(advice: dict | None, threshold: float = SCRATCH_UNLESS_SIMILARITY) -> tuple[bool, str]:
    """Whether the measurement cannot rule out negative transfer, and why.

    Negative transfer is ruled out only when the frozen pretrained features already separate the
    classes (chance-normalised k-NN similarity >= `threshold`) and explain the labels better than
    a randomly initialised twin (LogME gain > 0).
    """
    if advice is None:
        return True, "no measurement"
    similarity, gain = advice.get("similarity"), advice.get("logme_gain")
    if similarity is not None and similarity >= threshold and gain is not None and gain > 0:
        return False, f"similarity {similarity:.3f} >= {threshold:g} and LogME gain {gain:+.3f} > 0"
    gain_text = "n/a" if gain is None else f"{gain:+.3f}"
    return True, f"similarity {similarity:.3f} < {threshold:g} or LogME gain {gain_text} <= 0"


def build_candidates(explicit: dict, *, use_weights: bool, with_scratch: bool) -> list[Candidate]:
    """The race's candidates in cost order; `explicit` finetune keys apply to every one that uses them."""
    if not use_weights:
        return [Candidate("scratch", {**load_group_option("finetune", "full"), "backbone_lr_scale": 1.0,
                                      **explicit, "strategy": "full"}, use_weights=False)]
    freeze, partial, full = (load_group_option("finetune", s) for s in ("freeze", "partial", "full"))
    plans = [
        Candidate("freeze", {**freeze, **explicit, "strategy": "freeze"}, augment="none"),
        Candidate("lpft-partial", {**partial, **explicit, "strategy": "partial", "lpft": True}),
        Candidate("full-llrd", {**full, "backbone_lr_scale": 1.0, "layer_decay": LAYER_DECAY, **explicit,
                                "strategy": "full"}),
        Candidate("lpft-full", {**full, **explicit, "strategy": "full", "lpft": True}),
    ]
    if with_scratch:
        plans.append(Candidate("scratch", {**full, "backbone_lr_scale": 1.0, **explicit, "strategy": "full",
                                           "lpft": False}, use_weights=False))
    return plans


def rung_schedule(max_epochs: int, n_candidates: int, eta: int = ETA) -> list[Rung]:
    """Where the cuts fall: at max_epochs / eta**k, keeping ceil(n / eta) each time, the last at 1.

    5 candidates over 15 epochs: all to epoch 2, the best 2 to epoch 5, the best one to 15.
    """
    if max_epochs < 1:
        raise ConfigError(f"trainer.max_epochs={max_epochs!r}: finetune=auto needs at least 1 epoch.")
    keeps, alive = [], n_candidates
    while alive > 1:
        alive = max(1, math.ceil(alive / eta))
        keeps.append(alive)
    rungs: list[Rung] = []
    for k, keep in enumerate(keeps):
        end = min(max_epochs, max(1, math.ceil(max_epochs / eta ** (len(keeps) - k))))
        if rungs and rungs[-1].end >= end:
            rungs[-1] = Rung(rungs[-1].end, keep)  # too few epochs to cut twice apart: cut deeper now
        else:
            rungs.append(Rung(end, keep))
    if not rungs or rungs[-1].end < max_epochs:
        rungs.append(Rung(max_epochs, 1))
    return rungs


def schedule_cost(rungs: list[Rung], costs: list[float]) -> float:
    """Epoch-equivalents trained if the most expensive candidates always survive (the worst case)."""
    alive = sorted(costs, reverse=True)
    total, previous = 0.0, 0
    for rung in rungs:
        total += sum(alive) * (rung.end - previous)
        previous, alive = rung.end, alive[:rung.keep]
    return total


def explicit_keys(given: dict, defaults: dict) -> dict:
    """Finetune keys the user set (they differ from conf/finetune/auto.yaml): they bind every candidate."""
    return {k: v for k, v in given.items() if k not in ("strategy", "cache_features") and defaults.get(k) != v}


def plan_from_record(given: dict, record: dict) -> RacePlan:
    """The race a stopped run planned (`RacePlan.to_dict()` as race/progress.json keeps it), to resume it."""
    explicit = explicit_keys(given, load_group_option("finetune", "auto"))
    scratch = dict(record["scratch"])
    built = build_candidates(explicit, use_weights=True, with_scratch=bool(scratch["entered"]))
    candidates = [c for c in built if c.name in record["candidates"]]
    if [c.name for c in candidates] != list(record["candidates"]):
        raise ConfigError(f"the stopped race raced {record['candidates']}, which this version cannot rebuild "
                          f"(its candidates are {[c.name for c in built]}); start a new run.")
    rungs = [Rung(int(r["end"]), int(r["keep"])) for r in record["rungs"]]
    return RacePlan(candidates, rungs, scratch, float(record["cost_bound"]))


def plan_race(given: dict, advice: dict | None, max_epochs: int) -> RacePlan:
    """The candidates (scratch only when negative transfer is not ruled out) and the cuts."""
    enters, why = scratch_enters(advice)
    explicit = explicit_keys(given, load_group_option("finetune", "auto"))
    candidates = build_candidates(explicit, use_weights=True, with_scratch=enters)
    rungs = rung_schedule(max_epochs, sum(not c.free for c in candidates))
    cost = schedule_cost(rungs, [c.cost for c in candidates]) / max_epochs
    return RacePlan(candidates, rungs, {"entered": enters, "why": why, "explicit_keys": sorted(explicit)}, cost)
