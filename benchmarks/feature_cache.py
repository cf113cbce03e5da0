"""Feature cache speed-up: a `freeze` fit on the embedded digits with and without cached features.

Both runs go through the public CLI in one process, on CPU, with the same recipe, seed and epoch
budget; only `finetune.cache_features` differs. A short warm-up fit first pays the one-time costs
(imports, first forward pass). `wall_seconds` is the whole `fit` command (compose config, build,
train, test the best checkpoint); the speed-up is their ratio. Targets (issue 3): the cached run
>= 5x faster, test accuracy equal within 0.5 points.

    python benchmarks/feature_cache.py --epochs 10 --output benchmarks/feature_cache.json [--threads 1]
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

from transferkit.cli import app as cli  # noqa: E402
from transferkit.models.weights import house_backbones  # noqa: E402

log = logging.getLogger("feature_cache_benchmark")


def overrides(epochs: int, run_dir: Path, image_size: int = 32) -> list[str]:
    """`recipe=small_similar` (house backbone charnet when shipped, else random weights), on CPU."""
    weights = [] if "charnet" in house_backbones() else ["model.weights=none"]
    # head_solver=sgd: this measures SGD epochs over cached features (lbfgs would run one epoch).
    return ["recipe=small_similar", *weights, "finetune.head_solver=sgd", f"trainer.max_epochs={epochs}", "trainer.accelerator=cpu",
            "trainer.devices=1", "trainer.enable_progress_bar=false", "trainer.enable_model_summary=false",
            f"data.image_size={image_size}", f"run_dir={run_dir}"]


def timed_fit(args: list[str]) -> tuple[float, dict]:
    start = time.perf_counter()
    results = cli.run(["fit", *args])
    return time.perf_counter() - start, results


def run(epochs: int, workdir: Path, image_size: int = 32) -> dict:
    # Warm-up: imports and first-call costs are paid here, not by whichever timed run goes first.
    timed_fit([*overrides(1, workdir / "warmup", image_size), "finetune.cache_features=false",
               "trainer.limit_train_batches=2", "trainer.limit_val_batches=2", "trainer.limit_test_batches=2"])
    runs = {}
    for name, extra in (("cached", ["finetune.cache_features=true"]),
                        ("uncached", ["finetune.cache_features=false"])):
        args = [*overrides(epochs, workdir / name, image_size), *extra]
        seconds, results = timed_fit(args)
        runs[name] = {"wall_seconds": round(seconds, 2), "train_and_test_seconds": results["wall_seconds"],
                      "test_acc": results["metrics"]["test/acc"],
                      "val_acc": results["metrics"].get("val/acc"), "feature_cache": results["feature_cache"],
                      "weights": results["weights"], "epochs": epochs}
        log.info("%s: %.1f s, test acc %.4f", name, seconds, runs[name]["test_acc"])
    speedup = runs["uncached"]["wall_seconds"] / runs["cached"]["wall_seconds"]
    acc_gap = abs(runs["cached"]["test_acc"] - runs["uncached"]["test_acc"]) * 100
    return {"data": "embedded:digits", "recipe": "small_similar", "image_size": image_size, "device": "cpu",
            "torch_threads": __import__("torch").get_num_threads(), "runs": runs,
            "speedup": round(speedup, 2), "test_acc_gap_points": round(acc_gap, 3),
            "targets_met": {"speedup>=5": speedup >= 5, "acc_gap<=0.5": acc_gap <= 0.5}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--image-size", type=int, default=32,
                        help="data.image_size for both runs (the digits are upsampled from 8x8)")
    parser.add_argument("--output", type=Path, default=Path("benchmarks/results/feature_cache.json"))
    parser.add_argument("--threads", type=int, default=None,
                        help="torch intra-op threads for both runs (default: torch's choice); 1 avoids "
                             "thread-barrier stalls of tiny head-only ops on a busy machine")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        report = run(args.epochs, Path(tmp), args.image_size)
    args.output.write_text(json.dumps(report, indent=2) + "\n")
    summary = {k: report[k] for k in ("speedup", "test_acc_gap_points", "targets_met")}
    log.info("cached %.1f s, uncached %.1f s: %s -> %s", report["runs"]["cached"]["wall_seconds"],
             report["runs"]["uncached"]["wall_seconds"], json.dumps(summary), args.output)


if __name__ == "__main__":
    main()
