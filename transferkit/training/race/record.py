"""What the `finetune=auto` race leaves behind: the winner's checkpoints and metrics moved to the
run's usual places, and the race as a table for the log."""

from __future__ import annotations

import csv
import shutil
from pathlib import Path

from transferkit.training.race.rules import Entry, Rung


def adopt_winner(winner, run_dir: Path) -> dict[str, str]:
    """Move the winner's checkpoints, and merge its metrics, to where a fixed-strategy run keeps them."""
    target = run_dir / "checkpoints"
    target.mkdir(parents=True, exist_ok=True)
    paths = {}
    for name in ("best", "last"):
        source = winner.directory / "checkpoints" / f"{name}.ckpt"
        if source.is_file():
            paths[name] = str(shutil.move(source, target / f"{name}.ckpt"))
    merge_csv(sorted((winner.directory / "logs").glob("leg*/metrics.csv")), run_dir / "metrics.csv")
    return paths


def merge_csv(sources: list[Path], target: Path) -> None:
    """One metrics.csv from several (each leg's logger wrote its own), columns united."""
    rows, fields = [], []
    for source in sources:
        with source.open(newline="") as handle:
            reader = csv.DictReader(handle)
            fields += [f for f in reader.fieldnames or [] if f not in fields]
            rows += list(reader)
    with target.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)


def race_table(entries: list[Entry], rungs: list[Rung], winner: str, monitor: str = "val/acc") -> str:
    """The race for the log: each candidate's score ± bootstrap SE at each cut, then every cut's
    verdicts (kept or cut, and why: the rule's words)."""
    head = ["candidate", "strategy", *[f"epoch {r.end}" for r in rungs], "seconds"]
    lines = []
    for entry in entries:
        cells = [rung_cell(r) for r in entry.rungs] + ["-"] * (len(rungs) - len(entry.rungs))
        mark = " <- winner" if entry.name == winner else ""
        lines.append([entry.name, entry.strategy, *cells[:len(rungs)], f"{entry.seconds:.1f}{mark}"])
    widths = [max(len(str(row[i])) for row in [head, *lines]) for i in range(len(head))]
    text = ["  ".join(str(c).ljust(w) for c, w in zip(row, widths)) for row in [head, *lines]]
    return (f"race ({monitor} ± bootstrap SE over validation images, at each cut and at the end; the rule: the "
            "highest score survives, an exact tie goes to the cheaper plan):\n" + "\n".join(text)
            + verdict_lines(entries, rungs[-1].end if rungs else 0))


def rung_cell(rung: dict) -> str:
    if "score" in rung:
        return f"{rung['score']:.3f} ± {rung['se']:.3f}" + (" cut" if not rung.get("verdict", {}).get("kept", True)
                                                           else "")
    return f"{rung['val_loss']:.4f} / {rung['val_acc']:.3f}"  # a race recorded by an older transferkit


def verdict_lines(entries: list[Entry], end: int) -> str:
    """Why each candidate was kept or cut, cut by cut (the last: the choice at the end, epoch `end`)."""
    cuts: dict[int, list[str]] = {}
    for entry in entries:
        for rung in entry.rungs:
            if "verdict" in rung:
                cuts.setdefault(rung["epochs"], []).append(f"  {entry.name}: {rung['verdict']['why']}")
    return "".join(f"\n{'the choice at the end' if epoch == end else 'cut'} (epoch {epoch}):\n" + "\n".join(lines)
                   for epoch, lines in sorted(cuts.items()))
