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


def race_table(entries: list[Entry], rungs: list[Rung], winner: str) -> str:
    """The race as a small table for the log: val loss / val acc per rung, seconds."""
    head = ["candidate", "strategy", *[f"epoch {r.end}" for r in rungs], "seconds"]
    lines = []
    for entry in entries:
        cells = [f"{r['val_loss']:.4f} / {r['val_acc']:.3f}" for r in entry.rungs]
        cells += ["-"] * (len(rungs) - len(cells))
        mark = " <- winner" if entry.name == winner else ""
        lines.append([entry.name, entry.strategy, *cells, f"{entry.seconds:.1f}{mark}"])
    widths = [max(len(str(row[i])) for row in [head, *lines]) for i in range(len(head))]
    text = ["  ".join(str(c).ljust(w) for c, w in zip(row, widths)) for row in [head, *lines]]
    return "race (val loss / val acc at each cut):\n" + "\n".join(text)
