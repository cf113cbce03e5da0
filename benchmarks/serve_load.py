"""`serve` on CPU: throughput and latency with dynamic batching on (serve.max_batch_size=8) and off (1),
16 concurrent clients on localhost, A B A B.

A small model is fitted through the CLI (`fit recipe=small_similar model.weights=charnet`: resnet10t, grey,
on photo-like JPEGs, 1 epoch; the input size is --image-size). Each phase starts a real `python -m
transferkit serve` process (start-up not timed), warms it up, then 16 client threads (urllib, multipart
uploads of 320 x 240 JPEGs) send --requests requests in all as fast as the answers come back; images/s is
requests / wall time, latency is per request (send to last byte). Phases run on, off, on, off (--rounds
pairs); the ratio is on / off per pair. Writes benchmarks/results/serve_load.{json,md}.

    python benchmarks/serve_load.py --requests 640 --rounds 2 [--note "..."]
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import litserve  # noqa: E402
import torch  # noqa: E402

from benchmarks.inference_speed import write_jpeg_folder  # noqa: E402
from tests.serve_client import multipart, request, start_server, stop_server  # noqa: E402
from transferkit.cli import app as cli  # noqa: E402

log = logging.getLogger("serve_load")
RESULTS = REPO / "benchmarks" / "results"
MODES = {"batching on": 8, "batching off": 1}


def fit(work: Path, image_size: int) -> Path:
    root = work / "data"
    write_jpeg_folder(root, 96, 4, (320, 240))
    cli.run(["fit", "recipe=small_similar", f"data.root={root}", "model.weights=charnet", f"data.image_size={image_size}",
             "trainer.max_epochs=1", "trainer.accelerator=cpu", "trainer.devices=1", "report.enabled=false",
             "trainer.enable_progress_bar=false", "trainer.enable_model_summary=false", "data.num_workers=0",
             f"run_dir={work / 'run'}"])
    return work / "run"


def phase(run_dir: Path, bodies: list, max_batch_size: int, args: argparse.Namespace, work: Path) -> dict:
    """One server with `max_batch_size`: warm-up, then `args.requests` requests from `args.clients` threads."""
    server = start_server(run_dir, work, f"serve.max_batch_size={max_batch_size}",
                          f"serve.batch_timeout={args.batch_timeout}", "serve.log_level=warning",
                          "serve.accelerator=cpu", f"serve.torch_threads={args.torch_threads or 'null'}")
    try:
        def one(i: int) -> tuple[int, float]:
            body, headers = bodies[i % len(bodies)]
            start = time.perf_counter()
            status = request(server.url + "/predict", body, headers)[0]
            return status, time.perf_counter() - start

        with ThreadPoolExecutor(args.clients) as pool:
            list(pool.map(one, range(2 * args.clients)))  # warm-up
            start = time.perf_counter()
            results = list(pool.map(one, range(args.requests)))
            wall = time.perf_counter() - start
    finally:
        stop_server(server)
    latencies = sorted(seconds for _, seconds in results)
    failed = sum(status != 200 for status, _ in results)
    return {"max_batch_size": max_batch_size, "images_per_s": args.requests / wall, "wall_s": wall,
            "p50_ms": 1000 * latencies[len(latencies) // 2],
            "p99_ms": 1000 * latencies[min(len(latencies) - 1, int(0.99 * len(latencies)))], "failed": failed}


def measure(args: argparse.Namespace, work: Path) -> dict:
    run_dir = fit(work, args.image_size)
    images = sorted((work / "data").rglob("*.jpg"))[:64]
    bodies = [multipart(p.read_bytes(), filename=p.name, content_type="image/jpeg") for p in images]
    phases = []
    for round_ in range(args.rounds):
        for mode, size in MODES.items():
            result = {"round": round_, "mode": mode, **phase(run_dir, bodies, size, args, work)}
            log.info("%s", result)
            phases.append(result)
    summary = {}
    for mode in MODES:
        rows = [p for p in phases if p["mode"] == mode]
        summary[mode] = {key: statistics.median(r[key] for r in rows) for key in ("images_per_s", "p50_ms", "p99_ms")}
    ratios = [on["images_per_s"] / off["images_per_s"] for on, off in zip(phases[::2], phases[1::2])]
    return {"phases": phases, "summary": summary, "ratios_on_over_off": ratios,
            "ratio_median": statistics.median(ratios), "failed": sum(p["failed"] for p in phases)}


def machine(note: str | None) -> dict:
    return {"platform": platform.platform(), "cpus": os.cpu_count(), "load_average": list(os.getloadavg()),
            "python": platform.python_version(), "torch": torch.__version__, "litserve": litserve.__version__,
            "utc": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "note": note}


def markdown(results: dict) -> str:
    a, m = results["args"], results["machine"]
    lines = [f"### serve on CPU: {a['clients']} concurrent clients, {a['requests']} requests a phase, resnet10t "
             f"grey {a['image_size']} px, 320 x 240 JPEG uploads, serve.torch_threads={a['torch_threads']}; "
             f"A B A B ({a['rounds']} pairs), medians", "",
             "| mode | images/s | p50 latency (ms) | p99 latency (ms) |", "|---|---|---|---|"]
    for mode, row in results["summary"].items():
        lines.append(f"| {mode} (max_batch_size={MODES[mode]}) | {row['images_per_s']:.1f} | {row['p50_ms']:.0f} | "
                     f"{row['p99_ms']:.0f} |")
    ratios = ", ".join(f"{r:.2f}x" for r in results["ratios_on_over_off"])
    lines += ["", f"Batching on / off, per pair: {ratios} (median {results['ratio_median']:.2f}x); "
              f"failed requests: {results['failed']}.", "",
              f"{m['platform']}, {m['cpus']} CPUs, torch {m['torch']}, litserve {m['litserve']}, "
              f"load average {m['load_average'][0]:.1f}, {m['utc']}.{' ' + m['note'] if m['note'] else ''}"]
    return "\n".join(lines) + "\n"


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=640)
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--batch-timeout", type=float, default=0.005)
    parser.add_argument("--torch-threads", type=int, default=None, help="serve.torch_threads (default: torch's)")
    parser.add_argument("--out", type=Path, default=RESULTS / "serve_load")
    parser.add_argument("--note", default=None)
    parser.add_argument("--smoke", action="store_true", help="a quick end-to-end check: 32 requests, 1 pair")
    args = parser.parse_args()
    if args.smoke:
        args.requests, args.rounds, args.image_size = 32, 1, 32
    return args


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    args = parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        results = {"args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
                   **measure(args, Path(tmp)), "machine": machine(args.note)}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(results, indent=2) + "\n")
    args.out.with_suffix(".md").write_text(markdown(results))
    log.info("%s", markdown(results))


if __name__ == "__main__":
    main()
