"""`finetune=auto`: the candidate plans, the rung schedule and the elimination rule (pure).

Successive halving (Jamieson & Talwalkar 2016) over a few fine-tuning plans: every candidate trains
a short leg of its own full schedule, is scored on validation, the worse ones stop, and survivors
continue from where they stopped. The last one finishes its schedule. The runner that trains the
legs is `transferkit.commands.racing`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from transferkit.config_files import load_group_option
from transferkit.errors import ConfigError

ETA = 3                     # keep ceil(n / ETA) candidates at each cut: 5 -> 2 -> 1
TIE_TOLERANCE = 0.01        # validation losses this close (nats) are a tie; the cheaper plan wins
SCRATCH_UNLESS_SIMILARITY = 0.9  # scratch is ruled out only when frozen features already separate the classes
LAYER_DECAY = 0.75          # full-llrd: each lower backbone group gets 0.75x the LR of the one above
# Relative cost of one epoch; a frozen head on cached features costs next to nothing.
EPOCH_COST = {"freeze": 0.05, "lpft-partial": 0.7, "full-llrd": 1.0, "lpft-full": 1.0, "scratch": 1.0}
ORDER = tuple(EPOCH_COST)   # the cost order: ties go to the earlier (cheaper) plan
FREE_COST = 0.1             # a candidate this cheap is never cut: it waits for the finisher (see run_race)
RACE_PROGRESS = "race/progress.json"  # under the run directory: how far the race got (commands.race_progress)


@dataclass(frozen=True)
class Candidate:
    """One plan in the race: the finetune group it trains with, and how it starts."""

    name: str
    finetune: dict
    use_weights: bool = True  # starts from the planned weights (scratch: random init)
    augment: str | None = None  # freeze trains on cached features: no random augmentation

    @property
    def cost(self) -> float:
        return EPOCH_COST[self.name]

    @property
    def free(self) -> bool:
        """Costs next to nothing (a head solved on cached features): it stays in the race to the end,
        outside the cuts, and meets the finisher there. Cutting it early would only reward it for
        starting fast, since its score is final after one epoch while the others are still warming up."""
        return self.cost <= FREE_COST


@dataclass(frozen=True)
class Rung:
    end: int   # the candidates still in train until this epoch of their schedule ...
    keep: int  # ... then this many continue


@dataclass(frozen=True)
class RacePlan:
    """What planning decided for `finetune=auto`: who races, where the cuts fall, and why."""

    candidates: list[Candidate]
    rungs: list[Rung]
    scratch: dict          # {"entered": bool, "why": str}
    cost_bound: float      # worst-case epoch-equivalents / trainer.max_epochs

    def to_dict(self) -> dict:
        return {"candidates": [c.name for c in self.candidates],
                "rungs": [{"end": r.end, "keep": r.keep} for r in self.rungs],
                "scratch": dict(self.scratch), "cost_bound": round(self.cost_bound, 3)}


@dataclass
class Entry:
    """A candidate's record: one row per rung it ran (`results.json` -> auto.candidates)."""

    name: str
    strategy: str
    rungs: list[dict] = field(default_factory=list)
    seconds: float = 0.0

    def score(self) -> tuple[float, float]:
        """(val acc, val loss) of its last leg, as `choose_survivors` ranks them."""
        return self.rungs[-1]["score_acc"], self.rungs[-1]["score_loss"]

    def to_dict(self) -> dict:
        return {"name": self.name, "strategy": self.strategy, "rungs": self.rungs, "seconds": round(self.seconds, 2)}


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


def accuracy_tolerance(accuracy: float, val_size: int) -> float:
    """One binomial standard error of a validation accuracy: differences within it are noise."""
    p = min(max(accuracy, 1.0 / max(val_size, 1)), 1 - 1.0 / max(val_size, 1))
    return math.sqrt(p * (1 - p) / max(val_size, 1))


def choose_survivors(scores: dict[str, tuple[float, float]], keep: int, val_size: int,
                     tolerance: float = TIE_TOLERANCE) -> list[str]:
    """The `keep` best of `scores` (name -> (val acc, val loss)), one at a time:

    1. the contenders: accuracy within one binomial standard error of the best accuracy left;
    2. among them, validation loss within `tolerance` of their lowest;
    3. among those, the cheaper plan.

    On a tiny validation split every accuracy is within the noise, so the loss decides; on a larger
    one a clear accuracy gap decides first, so a calibrated but uninformative model (all near
    chance, low loss) cannot beat one that classifies better.
    """
    left = dict(scores)
    chosen: list[str] = []
    while left and len(chosen) < keep:
        best_acc = max(acc for acc, _ in left.values())
        contenders = {n: v for n, v in left.items() if v[0] >= best_acc - accuracy_tolerance(best_acc, val_size)}
        best_loss = min(loss for _, loss in contenders.values())
        tied = [n for n, (_, loss) in contenders.items() if loss <= best_loss + tolerance]
        pick = min(tied, key=lambda name: (ORDER.index(name) if name in ORDER else len(ORDER), left[name][1]))
        chosen.append(pick)
        del left[pick]
    return chosen


def leg_score(val_losses: list[float], val_accs: list[float]) -> tuple[float, float]:
    """A candidate's score after a leg: mean validation accuracy and loss of its last two evaluations
    (two, so one lucky epoch does not decide)."""
    if not val_losses:
        raise ValueError("a race leg produced no validation loss (is the val split empty?)")
    accs, losses = val_accs[-2:], val_losses[-2:]
    return float(sum(accs) / len(accs)), float(sum(losses) / len(losses))



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
