"""CPU overhead of `fit`: whole-process wall time against a hand-written PyTorch loop (issue 14, part 5).

The same work on the embedded digits, paired round by round (loop, fit, fit variants, loop, fit, ...):
resnet10t from random init, 32 px, full fine-tune (backbone at 0.1x the head's LR), AdamW, cosine
schedule with a one-epoch warm-up stepped per batch, batch 64, 2 workers, `augment=light`, 5 epochs,
a validation pass after each epoch and a test pass of the best epoch's model. `fit` keeps all its default
outputs (best.ckpt + last.ckpt with optimizer state every epoch, metrics.csv, TensorBoard where installed,
config.yaml, results.json); the loop saves the best weights when validation accuracy improves.

Variants of `fit` measure the levers one at a time:
* `fit`: as shipped: `python -m transferkit fit ...` (checkpoints written by a background thread:
  AsyncCheckpointIO around the atomic writer; `optimizer.fused=auto`, torch's fused AdamW; the collector
  frozen at exit);
* `fit_unfused`: `optimizer.fused=false`, the AdamW implementation the loop gets by default (a Python loop
  over the tensors on CPU): what is left is transferkit's and Lightning's overhead;
* `fit_full_shutdown`: `cli.main` without `transferkit.__main__`'s `gc.freeze()` at exit;
* `fit_sync_ckpt`: checkpoints written in the training thread (AtomicCheckpointIO alone, the old default).

    python benchmarks/cpu_fit.py [--rounds 3] [--epochs 5] [--output benchmarks/results/cpu_fit.json]

Each process is timed from launch to exit. The ratio is the median over rounds of fit / loop of the same
round; the machine's load average is recorded beside it.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results" / "cpu_fit.json"
BATCH, SIZE, LR, BACKBONE_LR_SCALE, WEIGHT_DECAY, WORKERS, SEED = 64, 32, 1e-3, 0.1, 0.01, 2, 42


def fit_overrides(run_dir: Path, epochs: int, kind: str = "fit") -> list[str]:
    return ["data.embedded=digits", "model.backbone=resnet10t", "model.weights=none", "finetune=full",
            f"data.image_size={SIZE}", f"data.batch_size={BATCH}", f"data.num_workers={WORKERS}",
            "data.mean=[0.5]", "data.std=[0.5]", "data.interpolation=bilinear", "augment=light",
            f"trainer.max_epochs={epochs}", "trainer.accelerator=cpu", "trainer.devices=1", f"seed={SEED}",
            f"run_dir={run_dir}", *(["optimizer.fused=false"] if kind == "fit_unfused" else [])]


def hand_loop(run_dir: Path, epochs: int) -> dict:
    """The same training written out with torch, timm and albumentations."""
    import math

    import albumentations as A
    import numpy as np
    import timm
    import torch
    import torch.nn.functional as F
    from albumentations.pytorch import ToTensorV2
    from torch.utils.data import DataLoader, Dataset

    from transferkit.data.embedded.digits import load_digits_splits  # the same fixed split as fit

    torch.manual_seed(SEED)
    splits = load_digits_splits(seed=0, val_fraction=0.15, test_fraction=0.15)
    normalize = [A.Normalize(mean=(0.5,) * 3, std=(0.5,) * 3, max_pixel_value=255.0), ToTensorV2()]
    train_tf = A.Compose([A.RandomResizedCrop((SIZE, SIZE), scale=(0.7, 1.0)), A.HorizontalFlip(p=0.5), *normalize])
    eval_tf = A.Compose([A.Resize(SIZE, SIZE), *normalize])

    class Digits(Dataset):
        def __init__(self, split: str, transform) -> None:
            self.images, self.labels = splits[split]
            self.transform = transform

        def __len__(self) -> int:
            return len(self.labels)

        def __getitem__(self, i: int):
            image = np.repeat(self.images[i].reshape(*self.images[i].shape[:2], -1)[..., :1], 3, axis=-1)
            return self.transform(image=image)["image"], int(self.labels[i])

    def loader(split: str, train: bool) -> DataLoader:
        return DataLoader(Digits(split, train_tf if train else eval_tf), batch_size=BATCH, shuffle=train,
                          num_workers=WORKERS, persistent_workers=True)

    train, val, test = loader("train", True), loader("val", False), loader("test", False)
    encoder = timm.create_model("resnet10t", pretrained=False, num_classes=0)
    head = torch.nn.Linear(encoder.num_features, 10)
    model = torch.nn.Sequential(encoder, head)
    optimizer = torch.optim.AdamW([{"params": encoder.parameters(), "lr": LR * BACKBONE_LR_SCALE},
                                   {"params": head.parameters(), "lr": LR}], weight_decay=WEIGHT_DECAY)
    total, warmup = epochs * len(train), len(train)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 0.01 + 0.99 * s / warmup if s < warmup
                                                 else 0.5 * (1 + math.cos(math.pi * (s - warmup) / max(1, total - warmup))))

    def accuracy(data: DataLoader) -> float:
        model.eval()
        correct = count = 0
        with torch.no_grad():
            for x, y in data:
                correct += int((model(x).argmax(1) == y).sum())
                count += len(y)
        return correct / count

    best, history = -1.0, []
    for epoch in range(epochs):
        model.train()
        for x, y in train:
            loss = F.cross_entropy(model(x), y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
        acc = accuracy(val)
        history.append(acc)
        print(f"epoch {epoch}: loss {float(loss):.4f} val acc {acc:.4f}", flush=True)
        if acc > best:
            best = acc
            torch.save(model.state_dict(), run_dir / "best.pt")
    model.load_state_dict(torch.load(run_dir / "best.pt", weights_only=True))
    return {"val_acc": history, "test_acc": accuracy(test)}


def child(kind: str, run_dir: Path, epochs: int) -> None:
    """One measured process: the hand-written loop, or `fit` with a lever switched off."""
    run_dir.mkdir(parents=True, exist_ok=True)
    if kind == "loop":
        print(json.dumps(hand_loop(run_dir, epochs)))
        return
    from transferkit.training import builders
    from transferkit.cli import app as cli
    from transferkit.runtime.checkpoint_io import AtomicCheckpointIO

    if kind == "fit_sync_ckpt":
        original = builders.build_plugins
        builders.build_plugins = lambda flags: [p.checkpoint_io if hasattr(p, "checkpoint_io") else p
                                                for p in original(flags)]
        assert isinstance(builders.build_plugins({})[0], AtomicCheckpointIO)
    cli.main(["fit", *fit_overrides(run_dir, epochs)])
    if kind != "fit_full_shutdown":  # as transferkit.__main__ ends
        import gc

        gc.freeze()


def timed(command: list[str]) -> float:
    start = time.perf_counter()
    done = subprocess.run(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    seconds = time.perf_counter() - start
    if done.returncode:
        raise RuntimeError(f"{command} failed:\n{done.stderr[-3000:]}")
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--variants", nargs="+", default=["fit", "fit_unfused", "fit_full_shutdown"],
                        choices=["fit", "fit_unfused", "fit_full_shutdown", "fit_sync_ckpt"])
    parser.add_argument("--output", type=Path, default=RESULTS)
    parser.add_argument("--child", choices=["loop", "fit_full_shutdown", "fit_sync_ckpt"], help=argparse.SUPPRESS)
    parser.add_argument("--run-dir", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child, args.run_dir, args.epochs)
        return
    me = [sys.executable, str(Path(__file__).resolve())]
    rows = []
    with tempfile.TemporaryDirectory(prefix="cpu_fit_") as tmp:
        for round_ in range(args.rounds):
            row = {"load_before": os.getloadavg()[0]}
            for kind in ["loop", *args.variants]:
                run_dir = Path(tmp) / f"{kind}_{round_}"
                if kind in ("fit", "fit_unfused"):  # exactly what a user runs
                    command = [sys.executable, "-m", "transferkit", "fit", *fit_overrides(run_dir, args.epochs, kind)]
                else:
                    command = [*me, "--child", kind, "--run-dir", str(run_dir), "--epochs", str(args.epochs)]
                row[kind] = round(timed(command), 2)
            rows.append(row)
            print(json.dumps(row), flush=True)
    import torch

    ratios = {k: statistics.median(r[k] / r["loop"] for r in rows) for k in args.variants}
    report = {"benchmark": "cpu_fit", "epochs": args.epochs, "rounds": rows,
              "median_seconds": {k: statistics.median(r[k] for r in rows) for k in ["loop", *args.variants]},
              "median_ratio_to_loop": {k: round(v, 3) for k, v in ratios.items()},
              "fit_ratio": round(ratios["fit"], 3) if "fit" in ratios else None,
              "load_average": [round(r["load_before"], 2) for r in rows], "cpus": os.cpu_count(),
              "torch": torch.__version__, "python": sys.version.split()[0]}
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps({"median_ratio_to_loop": report["median_ratio_to_loop"]}))


if __name__ == "__main__":
    main()
