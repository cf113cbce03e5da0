"""metrics.csv across the sessions of a resumed run (or a resumed race leg): Lightning's CSV logger
starts the file afresh, so the rows logged before the checkpoint wait aside and are joined after."""

from __future__ import annotations

import csv
from pathlib import Path

PREVIOUS_METRICS = "metrics.previous.csv"


def read_rows(path: Path) -> tuple[list[str], list[dict]]:
    if not path.is_file():
        return [], []
    with path.open(newline="") as handle:
        reader = csv.DictReader(handle)
        # A process killed while Lightning's CSV logger rewrote the file for new metric keys can
        # leave rows longer than the header: their unnamed values (DictReader's key None) are dropped.
        rows = [{k: v for k, v in row.items() if k is not None} for row in reader]
        return list(reader.fieldnames or []), rows


def write_rows(path: Path, fields: list[str], rows: list[dict]) -> None:
    temp = path.with_name(path.name + ".tmp")
    with temp.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)
    temp.replace(path)


def united_rows(paths: list[Path]) -> tuple[list[str], list[dict]]:
    fields, rows = [], []
    for path in paths:
        more_fields, more_rows = read_rows(path)
        fields += [f for f in more_fields if f not in fields]
        rows += more_rows
    return fields, rows


def set_aside_metrics(run_dir: Path, global_step: int) -> None:
    """Before a resumed fit: Lightning's CSV logger starts metrics.csv afresh, so the rows logged up
    to the checkpoint wait in metrics.previous.csv; rows past its step were lost work and go."""
    fields, rows = united_rows([run_dir / PREVIOUS_METRICS, run_dir / "metrics.csv"])
    kept = [row for row in rows if int(float(row.get("step") or 0)) < global_step]
    write_rows(run_dir / PREVIOUS_METRICS, fields, kept)
    (run_dir / "metrics.csv").unlink(missing_ok=True)


def join_metrics(run_dir: Path) -> None:
    """After a resumed fit (finished or not): earlier rows, then this session's, in metrics.csv."""
    previous = run_dir / PREVIOUS_METRICS
    if previous.is_file():
        write_rows(run_dir / "metrics.csv", *united_rows([previous, run_dir / "metrics.csv"]))
        previous.unlink()
