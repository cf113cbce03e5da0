"""A sweep's `sweep.csv` and `sweep.md`: one row per job, best first by the monitored metric."""

from __future__ import annotations

import csv
import os
import shlex
from pathlib import Path


def monitor_of(rows: list[dict]) -> dict | None:
    """The metric the runs' checkpoints monitored (`best/val/acc`, max), from the first run that says."""
    for row in rows:
        monitor = row.get("monitor")
        if monitor and monitor.get("metric"):
            return {"metric": f"best/{monitor['metric']}", "mode": monitor.get("mode", "max")}
    return None


def sort_rows(rows: list[dict], monitor: dict | None) -> list[dict]:
    """Runs with the monitored metric, best first; then the others (failed, not run) in job order."""
    if monitor is None:
        return sorted(rows, key=lambda r: r["job"])
    name, sign = monitor["metric"], (-1 if monitor["mode"] == "max" else 1)
    scored = [r for r in rows if name in (r.get("metrics") or {})]
    rest = [r for r in rows if name not in (r.get("metrics") or {})]
    return sorted(scored, key=lambda r: (sign * r["metrics"][name], r["job"])) + sorted(rest, key=lambda r: r["job"])


def metric_columns(rows: list[dict], monitor: dict | None) -> list[str]:
    """The monitored metric and its test twin (`best/val/acc`, `test/acc`); without a monitor, every test/*."""
    present = {k for r in rows for k in (r.get("metrics") or {})}
    if monitor is None:
        return sorted(k for k in present if k.startswith("test/"))
    test = "test/" + monitor["metric"].rsplit("/", 1)[-1]
    return [monitor["metric"]] + ([test] if test in present else [])


def table_rows(results: dict) -> tuple[list[str], list[list[str]]]:
    """Header and cells, shared by the CSV and the Markdown table."""
    rows, monitor = results["jobs"], results.get("monitor")
    swept, metrics = list(results.get("swept") or {}), metric_columns(rows, monitor)
    header = ["rank", "job", *swept, "status", *metrics, "epochs", "wall_s", "run_dir", "error"]
    cells = []
    for rank, row in enumerate(sort_rows(rows, monitor), start=1):
        values = row.get("metrics") or {}
        scored = bool(monitor) and monitor["metric"] in values
        run_dir = row.get("run_dir")
        cells.append([
            str(rank) if scored else "", str(row["job"]), *[str(row["swept"].get(k, "")) for k in swept],
            row["status"], *[f"{values[m]:.4f}" if m in values else "" for m in metrics],
            str(row.get("epochs", "")), f"{row['wall_seconds']:.1f}" if row.get("wall_seconds") is not None else "",
            os.path.relpath(run_dir, results["sweep_dir"]) if run_dir else "", row.get("error") or "",
        ])
    return header, cells


def write_tables(results: dict, sweep_dir: Path) -> str:
    """Write sweep.csv and sweep.md into `sweep_dir`; returns the Markdown table (for the console)."""
    header, cells = table_rows(results)
    with open(sweep_dir / "sweep.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(cells)
    if not any(row[-1] for row in cells):  # the error column only where something failed
        header, cells = header[:-1], [row[:-1] for row in cells]
    table = markdown_table(header, cells)
    (sweep_dir / "sweep.md").write_text(markdown_page(results, table))
    return table


def markdown_table(header: list[str], cells: list[list[str]]) -> str:
    def line(values: list[str]) -> str:
        return "| " + " | ".join(v.replace("|", "\\|") for v in values) + " |"

    return "\n".join([line(header), line(["---"] * len(header)), *map(line, cells)])


def markdown_page(results: dict, table: str) -> str:
    counts = ", ".join(f"{n} {status}" for status, n in results["counts"].items())
    monitor = results.get("monitor")
    order = f"sorted by `{monitor['metric']}` ({monitor['mode']})" if monitor else "in job order"
    command = "python -m transferkit " + shlex.join(results["argv"])
    return (f"# Sweep: {len(results['jobs'])} `{results['command']}` jobs ({counts})\n\n"
            f"```\n{command}\n```\n\n"
            f"Launcher `{results['launcher']['name']}`, {results['wall_seconds']:.0f} s in all; rows {order}. "
            f"Sweep directory `{results['sweep_dir']}`; `run_dir` is each job's run directory in it.\n\n{table}\n")
