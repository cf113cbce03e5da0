"""`finetune=auto`'s plan: which candidates race, where the cuts fall, and the worst-case cost (pure).

Planning decides the race (`plan_race`, or `plan_from_record` for a race stopped mid-way); the runner
that trains its legs and the elimination rule live in `transferkit.training.race`.

The field is as large as can all finish within the cost bound (`choose_field`): on the benchmark's
design rows every rule that cut candidates before the end of their schedule lost the late bloomers
(README, "finetune=auto"), so no plan of this version cuts; `budget_schedule` still places a cut for a
field that could not all finish, and races recorded by earlier versions resume with their own cuts.
"""

from __future__ import annotations

import logging

from transferkit.config.files import load_group_option
from transferkit.errors import ConfigError
from transferkit.planning.choices import COMBINES
from transferkit.planning.spec import FREE_COST, Candidate, RacePlan, Rung

log = logging.getLogger("transferkit")

COST_BOUND = 2.5           # worst-case epochs, as a multiple of the slowest fixed strategy's (trainer.max_epochs)
SCRATCH_UNLESS_SIMILARITY = 0.9  # scratch is ruled out only when frozen features already separate the classes
LAYER_DECAY = 0.75          # full-llrd: each lower backbone group gets 0.75x the LR of the one above
# Which paid candidates join the field first: by how often each was the best one trained alone on the
# design rows (full-llrd 4 of 9 row-seeds, scratch 4, lpft-full 1, lpft-partial 0; README).
PRIORITY = ("full-llrd", "scratch", "lpft-full", "lpft-partial")


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


def budget_schedule(max_epochs: int, costs: list[float], keep: int = 1, bound: float = COST_BOUND) -> list[Rung]:
    """No cut when every candidate can finish within the bound; else one cut, as late as the bound
    allows: every candidate trains to epoch t, the best `keep` finish. `costs`: every candidate's
    epoch cost. t is the largest epoch with
    `schedule_cost <= bound * max_epochs` in the worst case (the most expensive ones survive); with
    no such epoch (max_epochs 1) the cut falls at epoch 1.

    5 candidates (4 paid: 0.7, 1, 1, 1) over 15 epochs, keep 1: all to epoch 8, the best one to 15.
    """
    if max_epochs < 1:
        raise ConfigError(f"trainer.max_epochs={max_epochs!r}: finetune=auto needs at least 1 epoch.")
    paid = sum(c > FREE_COST for c in costs)
    if schedule_cost([Rung(max_epochs, paid)], costs) <= bound * max_epochs:
        return [Rung(max_epochs, max(paid, 1))]  # everyone finishes: no cut
    if paid <= keep or max_epochs == 1:
        return [Rung(max_epochs, 1)]
    cut = 1
    for end in range(1, max_epochs):
        if schedule_cost([Rung(end, keep), Rung(max_epochs, 1)], costs) <= bound * max_epochs:
            cut = end
    return [Rung(cut, keep), Rung(max_epochs, 1)]


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
    return {k: v for k, v in given.items()
            if k not in ("strategy", "cache_features", "combine") and defaults.get(k) != v}


def check_combine(given: dict) -> str:
    """`finetune.combine`: what the run's model is after the race (see RacePlan.combine)."""
    combine = str(given.get("combine", "ensemble"))
    if combine not in COMBINES:
        raise ConfigError(f"finetune.combine={combine!r} is not one of {' | '.join(COMBINES)}: ensemble averages "
                          "every candidate that finished the race, best keeps the winner alone.")
    return combine


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
    return RacePlan(candidates, rungs, scratch, float(record["cost_bound"]), tuple(record.get("left_out", ())),
                    str(record.get("combine", "best")))


def choose_field(candidates: list[Candidate], bound: float = COST_BOUND) -> tuple[list[Candidate], list[str]]:
    """The candidates that race, in cost order, and those left out: the free ones, then paid ones in
    `PRIORITY` order while the whole field can finish (its epoch costs sum to at most `bound`)."""
    chosen = [c for c in candidates if c.free]
    for name in PRIORITY:
        found = [c for c in candidates if c.name == name]
        if found and sum(c.cost for c in chosen) + found[0].cost <= bound:
            chosen.append(found[0])
    field = [c for c in candidates if c in chosen]
    return field, [c.name for c in candidates if c not in chosen]


def plan_race(given: dict, advice: dict | None, max_epochs: int) -> RacePlan:
    """The candidates (scratch only when negative transfer is not ruled out; as many as can all finish
    within the cost bound) and the cuts (none when they all finish)."""
    enters, why = scratch_enters(advice)
    combine = check_combine(given)
    explicit = explicit_keys(given, load_group_option("finetune", "auto"))
    candidates, left_out = choose_field(build_candidates(explicit, use_weights=True, with_scratch=enters))
    rungs = budget_schedule(max_epochs, [c.cost for c in candidates])
    cost = schedule_cost(rungs, [c.cost for c in candidates]) / max_epochs
    return RacePlan(candidates, rungs, {"entered": enters, "why": why, "explicit_keys": sorted(explicit)}, cost,
                    tuple(left_out), combine)


def describe(race: RacePlan) -> str:
    """The plan in one line for the log: who races, who the bound left out, the cuts, and why scratch."""
    paid = sum(not c.free for c in race.candidates)
    cuts = [r.end for r in race.rungs if r.keep < paid]
    left = f" (left out by the {COST_BOUND:g}x cost bound: {', '.join(race.left_out)})" if race.left_out else ""
    when = f"cuts after epochs {cuts}" if cuts else f"no cut: all finish at epoch {race.rungs[-1].end}"
    model = ("the run's model: the ensemble of the finishers within 2 paired SE of the winner "
             "(finetune.combine=ensemble)"
             if race.combine == "ensemble" and len(race.candidates) > 1 else "the run's model: the winner")
    return (f"racing {', '.join(c.name for c in race.candidates)}{left}; {when}; scratch "
            f"{'enters' if race.scratch['entered'] else 'left out'} ({race.scratch['why']}); {model}")
