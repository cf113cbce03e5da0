"""The `summary` command's tables: summary.md, summary.csv (and compare.csv), and the log's text table."""

from __future__ import annotations

import csv
import logging
from pathlib import Path

from transferkit.evaluation.summary import human

log = logging.getLogger("transferkit")

COLUMNS = ["row", "layers", "output_shape", "size_check", "params", "trainable", "activations_kib", "macs",
           "flops", "receptive_field"]
COMPARE_COLUMNS = ["model", "year", "input", "params", "macs", "flops", "depth", "activations_kib"]
COUNTED = ("params", "macs", "flops")  # shown as 1.23 M


def cell(row: dict, column: str) -> str:
    value = row[column]
    return human(value) if column in COUNTED and isinstance(value, int) else str(value)


def markdown(rows: list[dict], columns: list[str]) -> str:
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(cell(r, c) for c in columns) + " |" for r in rows]
    return "\n".join(lines)


def text_table(rows: list[dict], columns: list[str]) -> str:
    cells = [list(columns)] + [[cell(r, c) for c in columns] for r in rows]
    widths = [min(40, max(len(row[i]) for row in cells)) for i in range(len(columns))]
    return "\n".join("  ".join(v[:40].ljust(w) for v, w in zip(row, widths)) for row in cells)


def write_csv(rows: list[dict], path: Path, columns: list[str]) -> Path:
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    return path


def header_line(record: dict) -> str:
    """The table's title: the model, its input and strategy, its parameters and FLOPs."""
    in_chans, size, _ = record["input"]
    return (f"{record['backbone']}, {in_chans}x{size}x{size} input, finetune={record['strategy']}: backbone "
            f"{human(record['backbone_params'])} parameters ({human(record['params'])} with a "
            f"{record['num_classes']}-class head), {human(record['macs'])}MACs = {human(record['flops'])}FLOPs "
            "(flop_counter: 2 FLOPs per multiply-add)")


def write_summary(record: dict, compared: list[dict], run_dir: Path) -> dict:
    """Write summary.md and summary.csv (compare.csv with `compared` rows) into `run_dir`; returns the
    record with the compared rows and the run directory."""
    header, rows = header_line(record), record["rows"]
    md = f"# {header}\n\n{markdown(rows, COLUMNS)}\n"
    if compared:
        md += f"\n## The course's architectures\n\n{markdown(compared, COMPARE_COLUMNS)}\n"
        write_csv(compared, run_dir / "compare.csv", COMPARE_COLUMNS)
        log.info("The course's architectures (random init):\n%s", text_table(compared, COMPARE_COLUMNS))
    write_csv(rows, run_dir / "summary.csv", COLUMNS)
    (run_dir / "summary.md").write_text(md)
    log.info("%s\n%s", header, text_table(rows, COLUMNS))
    return {**record, "compare": compared, "run_dir": str(run_dir)}
