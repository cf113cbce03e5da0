"""What the run report adds to the main job: `python -m transferkit fit recipe=small_similar` with
`report.enabled=false` and `=true`, side by side.

Each pair runs both settings as fresh processes of this tree, in alternating order (off on, on off,
...), and the ratio on/off of whole-process wall time (start to exit) is taken per pair; the
median pair ratio is the result. The load average before each run is recorded, since a busy
machine moves single runs by seconds.

    python benchmarks/report_cost.py --pairs 5

Writes `benchmarks/results/report_cost.json`.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import re
import statistics
import tempfile
from pathlib import Path

from main_job import COMMAND, REPO, run_process  # noqa: E402 - the same process harness (benchmarks/ is on sys.path)


def run(enabled: bool, run_dir: Path) -> dict:
    load = os.getloadavg()[0]
    proc, results, wall = run_process(REPO, run_dir, f"report.enabled={str(enabled).lower()}")
    drawn = re.search(r"Report: .* \(([\d.]+) s\)", proc.stderr)
    return {"wall_seconds": round(wall, 2), "fit_wall_seconds": results["wall_seconds"],
            "report_seconds": float(drawn.group(1)) if drawn else None, "load_before": round(load, 2),
            "test_acc": results["metrics"]["test/acc"], "report_written": (run_dir / "report.html").is_file()}


def summarise(pairs: list[dict]) -> dict:
    walls = {k: [p[k]["wall_seconds"] for p in pairs] for k in ("off", "on")}
    loads = [p[k]["load_before"] for p in pairs for k in ("off", "on")]
    return {"date": datetime.date.today().isoformat(), "machine": f"{platform.machine()}, {os.cpu_count()} CPUs",
            "command": "python " + " ".join(COMMAND) + " report.enabled=false|true", "pairs": pairs,
            "median_wall": {k: statistics.median(v) for k, v in walls.items()},
            "median_pair_ratio_on_over_off": round(statistics.median(p["ratio_on_over_off"] for p in pairs), 3),
            "median_report_seconds": statistics.median(p["on"]["report_seconds"] for p in pairs),
            "median_report_share_of_on_wall": round(statistics.median(
                p["on"]["report_seconds"] / p["on"]["wall_seconds"] for p in pairs), 4),
            "load_before": {"min": min(loads), "max": max(loads)}}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=5)
    parser.add_argument("--output", type=Path, default=REPO / "benchmarks" / "results" / "report_cost.json")
    args = parser.parse_args(argv)
    root = Path(tempfile.mkdtemp(prefix="report_cost-"))
    pairs = []
    for i in range(args.pairs):
        order = (False, True) if i % 2 == 0 else (True, False)
        pair = {("on" if enabled else "off"): run(enabled, root / f"{i}-{enabled}") for enabled in order}
        assert pair["on"]["report_written"] and not pair["off"]["report_written"]
        pair["order"] = ["on" if e else "off" for e in order]
        pair["ratio_on_over_off"] = round(pair["on"]["wall_seconds"] / pair["off"]["wall_seconds"], 3)
        pairs.append(pair)
        print(f"pair {i}: {json.dumps(pair)}", flush=True)  # noqa: T201 - a benchmark script's output
        record = summarise(pairs)  # written after every pair, so a run cut short keeps what it measured
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(json.dumps(record, indent=2) + "\n")
    print(json.dumps({k: record[k] for k in ("median_wall", "median_pair_ratio_on_over_off",  # noqa: T201
                                             "median_report_seconds", "load_before")}))


if __name__ == "__main__":
    main()
