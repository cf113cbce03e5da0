"""Train-loader images/s: transferkit (decoded-image cache + albumentations) vs. a plain PIL ImageFolder.

Both loaders read the same generated JPEG folder in the same run, with the same batch size,
workers and output size (random resized crop + flip + normalise). Epoch 1 fills the cache;
the reported ratio compares the later epochs, which is what a multi-epoch fine-tune sees.

    python benchmarks/loader_speed.py --images 400 --epochs 3 --workers 2
"""

from __future__ import annotations

import argparse
import json
import logging
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image
from torch.utils.data import DataLoader
from torchvision import datasets
from torchvision import transforms as T

from transferkit.data.folders import scan_image_folder
from transferkit.data.image_cache import DecodedImageCache
from transferkit.data.sources import FileSource, TransformedDataset
from transferkit.data.transforms import build_transforms

log = logging.getLogger("loader_speed")
MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def write_jpeg_folder(root: Path, images: int, classes: int, size: tuple[int, int], seed: int) -> None:
    """Photo-like JPEGs (smooth colour fields plus mild noise) at ``size`` (width, height)."""
    rng = np.random.default_rng(seed)
    width, height = size
    for i in range(images):
        folder = root / f"class_{i % classes}"
        folder.mkdir(parents=True, exist_ok=True)
        coarse = rng.integers(0, 256, (height // 16, width // 16, 3), dtype=np.uint8)
        base = np.asarray(Image.fromarray(coarse).resize((width, height), Image.BICUBIC), dtype=np.int16)
        noisy = np.clip(base + rng.integers(-12, 13, base.shape), 0, 255).astype(np.uint8)
        Image.fromarray(noisy).save(folder / f"{i:05d}.jpg", quality=90)


def plain_loader(root: Path, image_size: int, batch_size: int, workers: int) -> DataLoader:
    transform = T.Compose([
        T.RandomResizedCrop(image_size, scale=(0.7, 1.0)),
        T.RandomHorizontalFlip(),
        T.ToTensor(),
        T.Normalize(MEAN, STD),
    ])
    dataset = datasets.ImageFolder(str(root), transform=transform)
    return DataLoader(dataset, batch_size=batch_size, shuffle=True, num_workers=workers,
                      persistent_workers=workers > 0)


def cached_loader(root: Path, image_size: int, batch_size: int, workers: int) -> DataLoader:
    scan = scan_image_folder(root, val_fraction=0.0, num_workers=workers)
    source = DecodedImageCache(FileSource(scan.splits["train"]), image_size=image_size)
    transform = build_transforms("light", train=True, image_size=image_size, mean=MEAN, std=STD)
    return DataLoader(TransformedDataset(source, transform), batch_size=batch_size, shuffle=True,
                      num_workers=workers, persistent_workers=workers > 0)


def epoch_rates(loader: DataLoader, epochs: int) -> list[float]:
    """Images per second of each epoch."""
    rates = []
    for _ in range(epochs):
        start, seen = time.perf_counter(), 0
        for images, _ in loader:
            seen += len(images)
        rates.append(seen / (time.perf_counter() - start))
    return rates


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--folder", type=Path, help="existing class folder; default: generate one")
    parser.add_argument("--images", type=int, default=400)
    parser.add_argument("--classes", type=int, default=4)
    parser.add_argument("--source-size", type=int, nargs=2, default=(500, 375), metavar=("W", "H"))
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--output", type=Path, help="write the numbers as JSON here")
    return parser.parse_args()


def run(args: argparse.Namespace, root: Path) -> dict:
    plain = epoch_rates(plain_loader(root, args.image_size, args.batch_size, args.workers), args.epochs)
    cached = epoch_rates(cached_loader(root, args.image_size, args.batch_size, args.workers), args.epochs)
    plain_steady, cached_steady = float(np.mean(plain[1:])), float(np.mean(cached[1:]))
    return {
        "images": args.images, "source_size": list(args.source_size), "image_size": args.image_size,
        "batch_size": args.batch_size, "workers": args.workers, "epochs": args.epochs,
        "plain_images_per_s": [round(r, 1) for r in plain],
        "cached_images_per_s": [round(r, 1) for r in cached],
        "speedup_after_first_epoch": round(cached_steady / plain_steady, 2),
    }


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    args = parse_args()
    if args.epochs < 2:
        raise SystemExit("--epochs must be at least 2: epoch 1 fills the cache.")
    with tempfile.TemporaryDirectory(prefix="loader_speed_") as tmp:
        root = args.folder
        if root is None:
            root = Path(tmp)
            write_jpeg_folder(root, args.images, args.classes, tuple(args.source_size), seed=0)
        result = run(args, root)
    log.info("plain PIL ImageFolder images/s per epoch: %s", result["plain_images_per_s"])
    log.info("transferkit cached       images/s per epoch: %s", result["cached_images_per_s"])
    log.info("speed-up after the first epoch: %.2fx", result["speedup_after_first_epoch"])
    if args.output:
        args.output.write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
