"""Test accuracy of `fit` on a folder vs. on the same folder written by `optimize` (streamed), over seeds.

The optimized path shuffles with LitData's own order, so single runs differ; the claim is that the means agree
within one standard error. Tiny CPU runs (test_resnet, random init, 32 px, class-coloured images).

    python benchmarks/stream_quality.py --seeds 0 1 2 --output benchmarks/results/stream_quality.json
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import sys
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

log = logging.getLogger("stream_quality")


def write_folder(root: Path, classes: int, per_class: int, seed: int = 0) -> None:
    """32 px images whose dominant colour channel (plus noise) is the class: learnable, not trivial."""
    rng = np.random.default_rng(seed)
    for label in range(classes):
        (root / f"c{label}").mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            pixels = rng.integers(0, 140, (32, 32, 3), dtype=np.uint8)
            pixels[..., label % 3] += rng.integers(40, 110, dtype=np.uint8)
            Image.fromarray(pixels).save(root / f"c{label}" / f"{i}.png")


def fit(root: str, seed: int, run_dir: Path, epochs: int) -> float:
    from transferkit.cli import app as cli

    results = cli.run(["fit", f"data.root={root}", "model.backbone=test_resnet", "model.weights=none",
                       "model.in_chans=3", "data.image_size=32", "data.batch_size=16", "data.num_workers=0",
                       f"trainer.max_epochs={epochs}", "trainer.accelerator=cpu", "trainer.devices=1",
                       "trainer.enable_progress_bar=false", "finetune=full", "calibration=none",
                       "data.val_fraction=0.2", "data.test_fraction=0.2", f"seed={seed}", f"run_dir={run_dir}"])
    return float(results["metrics"]["test/acc"])


def summary(values: list[float]) -> dict:
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return {"test_acc": values, "mean": round(statistics.mean(values), 4), "std": round(std, 4),
            "se": round(std / len(values) ** 0.5, 4)}


def main() -> None:
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--classes", type=int, default=3)
    parser.add_argument("--per-class", type=int, default=60)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--output", type=Path)
    args = parser.parse_args()
    from transferkit.cli import app as cli

    rows: dict[str, list[float]] = {"local": [], "optimized": []}
    with tempfile.TemporaryDirectory(prefix="stream_quality_") as tmp:
        folder = Path(tmp) / "images"
        write_folder(folder, args.classes, args.per_class)
        for seed in args.seeds:  # optimize per seed: the split is drawn with the seed, as fit draws it
            out = Path(tmp) / f"optimized{seed}"
            cli.run(["optimize", f"data.root={folder}", f"out={out}", "data.val_fraction=0.2",
                     "data.test_fraction=0.2", f"seed={seed}", f"run_dir={Path(tmp) / f'optimize{seed}'}"])
            rows["local"].append(fit(str(folder), seed, Path(tmp) / f"local{seed}", args.epochs))
            rows["optimized"].append(fit(str(out), seed, Path(tmp) / f"opt{seed}", args.epochs))
    result = {"command": "python benchmarks/stream_quality.py " + " ".join(sys.argv[1:]), "seeds": args.seeds,
              "images": args.classes * args.per_class, "epochs": args.epochs,
              **{name: summary(values) for name, values in rows.items()}}
    local, optimized = result["local"], result["optimized"]
    result["difference"] = round(optimized["mean"] - local["mean"], 4)
    result["within_one_se"] = abs(result["difference"]) <= max(local["se"], optimized["se"])
    print(json.dumps(result, indent=1))
    if args.output:
        args.output.write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
