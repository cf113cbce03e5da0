"""`finetune=auto`: the candidate plans, the rung schedule and the elimination rule (pure).

Successive halving (Jamieson & Talwalkar 2016) over a few fine-tuning plans: every candidate trains
a short leg of its own full schedule, is scored on validation, the worse ones stop, and survivors
continue from where they stopped. The last one finishes its schedule. The runner that trains the
legs is `transferkit.training.race.legs`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from transferkit.planning.spec import EPOCH_COST, FREE_COST, Candidate, RacePlan, Rung  # noqa: F401 - the plan's types


ETA = 3                     # keep ceil(n / ETA) candidates at each cut: 5 -> 2 -> 1
TIE_TOLERANCE = 0.01        # validation losses this close (nats) are a tie; the cheaper plan wins
ORDER = tuple(EPOCH_COST)   # the cost order: ties go to the earlier (cheaper) plan
RACE_PROGRESS = "race/progress.json"  # under the run directory: how far the race got (commands.race_progress)


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
