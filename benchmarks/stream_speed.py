"""Train-loader images/s: an optimized data set streamed from an S3 store (warm chunk cache) vs. the local folder.

The same generated JPEG folder is uploaded to a local S3-compatible server (moto, on localhost), written in
LitData's format by `python -m transferkit optimize`, and read through `fit`'s own train loaders
(`ClassificationDataModule`: decode, augment `light`, collate). One warm-up epoch each (the stream fills its
chunk cache, the folder fills the page cache), then epochs alternate A B A B; the ratio is streamed / local.
The S3 server runs in this process; the requests that reach it during the timed epochs are counted (none when
the cache is warm, so it takes no time from the loader).

    python benchmarks/stream_speed.py --images 2000 --rounds 3 --workers 0 --output benchmarks/results/stream_speed.json
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import socket
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from loader_speed import write_jpeg_folder  # noqa: E402  (the same photo-like JPEGs)

log = logging.getLogger("stream_speed")


def start_store() -> tuple[object, str]:
    from moto.server import ThreadedMotoServer

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    os.environ.update(AWS_ACCESS_KEY_ID="bench", AWS_SECRET_ACCESS_KEY="bench", AWS_DEFAULT_REGION="us-east-1",
                      AWS_ENDPOINT_URL=endpoint)
    logging.getLogger("werkzeug").setLevel(logging.WARNING)
    return server, endpoint


def upload(folder: Path, bucket: str) -> str:
    import boto3

    client = boto3.client("s3")
    client.create_bucket(Bucket=bucket)
    for path in sorted(folder.rglob("*.jpg")):
        client.upload_file(str(path), bucket, f"raw/{path.relative_to(folder).as_posix()}")
    return f"s3://{bucket}/raw"


def datamodule(root: str, args: argparse.Namespace, cache: Path):
    from transferkit.data.datamodule import ClassificationDataModule

    data = ClassificationDataModule(root=root, image_size=args.image_size, batch_size=args.batch_size,
                                    num_workers=args.workers, val_fraction=0.0, test_fraction=0.0,
                                    mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225), augment="light",
                                    stream_cache=str(cache), max_bad_fraction=0.0)
    data.scan()
    return data


class RequestCount(logging.Handler):
    """Requests the S3 server answers (werkzeug logs one line per request)."""

    def __init__(self) -> None:
        super().__init__()
        self.count = 0

    def emit(self, record: logging.LogRecord) -> None:
        self.count += 1


def count_requests() -> RequestCount:
    counter = RequestCount()
    server_log = logging.getLogger("werkzeug")
    server_log.setLevel(logging.INFO)
    server_log.addHandler(counter)
    server_log.propagate = False
    return counter


def epoch_rate(loader) -> float:
    start, seen = time.perf_counter(), 0
    for images, _ in loader:
        seen += len(images)
    return seen / (time.perf_counter() - start)


def versions() -> dict:
    import litdata
    import torch

    return {"python": platform.python_version(), "torch": torch.__version__, "litdata": litdata.__version__,
            "machine": platform.machine(), "system": platform.platform(), "cpus": os.cpu_count()}


def run(args: argparse.Namespace, tmp: Path) -> dict:
    from transferkit.cli import app as cli

    folder = tmp / "images"
    write_jpeg_folder(folder, args.images, args.classes, tuple(args.source_size), seed=0)
    server, endpoint = start_store()
    try:
        raw = upload(folder, "bench")
        cli.run(["optimize", f"data.root={raw}", "out=s3://bench/optimized", "data.val_fraction=0",
                 "data.test_fraction=0", "data.max_bad_fraction=0", f"run_dir={tmp / 'optimize'}"])
        loaders = {"local": datamodule(str(folder), args, tmp / "cache").train_dataloader(),
                   "streamed": datamodule("s3://bench/optimized", args, tmp / "cache").train_dataloader()}
        warm = {name: round(epoch_rate(loader), 1) for name, loader in loaders.items()}  # fills the caches
        requests = count_requests()
        rates: dict[str, list[float]] = {"local": [], "streamed": []}
        for _ in range(args.rounds):  # A B A B
            for name in ("local", "streamed"):
                rates[name].append(round(epoch_rate(loaders[name]), 1))
        cached = sum(p.stat().st_size for p in (tmp / "cache").rglob("*.bin"))
    finally:
        server.stop()
    ratio = float(np.mean(rates["streamed"]) / np.mean(rates["local"]))
    return {
        "what": "train-loader images/s (decode + augment light + collate), optimized data streamed from a local "
                "S3 server with a warm chunk cache vs. the same JPEG folder on local disk; epochs alternate A B A B",
        "command": "python benchmarks/stream_speed.py " + " ".join(sys.argv[1:]),
        "images": args.images, "source_size": list(args.source_size), "image_size": args.image_size,
        "batch_size": args.batch_size, "workers": args.workers, "rounds": args.rounds, "endpoint": endpoint,
        "warm_up_images_per_s": warm, "local_images_per_s": rates["local"],
        "streamed_images_per_s": rates["streamed"], "streamed_over_local": round(ratio, 3),
        "local_mean_images_per_s": round(float(np.mean(rates["local"])), 1),
        "streamed_mean_images_per_s": round(float(np.mean(rates["streamed"])), 1),
        "store_requests_during_timed_epochs": requests.count, "load_average_after": list(os.getloadavg()),
        "chunk_cache_bytes": cached, "versions": versions(),
    }


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=2000)
    parser.add_argument("--classes", type=int, default=4)
    parser.add_argument("--source-size", type=int, nargs=2, default=(320, 240), metavar=("W", "H"))
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--workers", type=int, default=0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--output", type=Path, help="write the numbers as JSON here")
    return parser.parse_args()


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
    args = parse_args()
    with tempfile.TemporaryDirectory(prefix="stream_speed_") as tmp:
        result = run(args, Path(tmp))
    log.info("local    images/s: %s", result["local_images_per_s"])
    log.info("streamed images/s: %s", result["streamed_images_per_s"])
    log.info("streamed / local: %.2fx", result["streamed_over_local"])
    if args.output:
        args.output.write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
