"""The `finetune=auto` race's record on disk, so that a race stopped mid-way resumes with `fit resume=`.

`<run_dir>/race/progress.json` holds the planned race (candidates, cuts, the advice that chose them),
who is still in, each candidate's rungs so far, its legs run and its linear probe. It is rewritten
after every leg and every cut. A resumed race starts the candidates still in, gives them back their
record, skips the legs they finished and continues each unfinished leg from its own checkpoint; the
cuts already made stay made. Each leg's validation history travels in its checkpoints
(`racing.ValidationRecorder`), so a leg's score is the same whether or not it was interrupted.
"""

from __future__ import annotations

import json
from pathlib import Path

from pytorch_lightning.utilities import rank_zero_only

from transferkit.training.race.rules import RACE_PROGRESS, Entry, RacePlan
from transferkit.training.rundir import write_json


def read_progress(run_dir: Path) -> dict | None:
    path = Path(run_dir) / RACE_PROGRESS
    return json.loads(path.read_text()) if path.is_file() else None


class RaceProgress:
    """Writes the race's progress; on a resumed run, hands each candidate its earlier record."""

    def __init__(self, run_dir: Path, race: RacePlan, advice: dict | None, previous: dict | None = None) -> None:
        self.path = Path(run_dir) / RACE_PROGRESS
        self.plan, self.advice, self.previous = race.to_dict(), advice, previous

    def still_in(self, name: str) -> bool:
        return self.previous is None or name in self.previous["alive"]

    def entry(self, name: str) -> Entry:
        """A candidate's record from the earlier session (an empty one if it had none)."""
        found = [e for e in (self.previous or {}).get("entries", []) if e["name"] == name]
        if not found:
            return Entry(name, "")
        record = found[0]
        return Entry(record["name"], record["strategy"], list(record["rungs"]), float(record["seconds"]))

    def restore(self, leg) -> None:
        """Give a restarted candidate its rungs, seconds, legs run and linear probe."""
        if self.previous is None:
            return
        recorded = self.entry(leg.candidate.name)
        leg.entry.rungs, leg.entry.seconds = recorded.rungs, recorded.seconds
        state = self.previous.get("legs", {}).get(leg.candidate.name, {})
        leg.legs_run, leg.probe = int(state.get("legs_run", 0)), state.get("probe")

    def save(self, legs: dict, entries: list[Entry]) -> None:
        if rank_zero_only.rank != 0:
            return
        record = {"plan": self.plan, "advice": self.advice, "alive": list(legs),
                  "entries": [e.to_dict(outputs=True) for e in entries],
                  "legs": {name: {"legs_run": leg.legs_run, "probe": leg.probe} for name, leg in legs.items()}}
        self.path.parent.mkdir(parents=True, exist_ok=True)
        write_json(record, self.path)
