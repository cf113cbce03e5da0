"""Does `fit` from a folder of JPEGs keep the GPU busy? (issue 14, part 4)

Generates a folder of JPEGs (random sizes 256-500 px, photo-like smooth content, quality 90) and runs
`fit` on it (resnet50 from random init, bf16-mixed, channels last, batch 256, 224 px, augment=light,
data.num_workers=auto) with each input path:

* `decode=cpu`: decode + RandomResizedCrop + flip in DataLoader workers (albumentations), the default;
* `decode=cpu, cache=true`: the decoded-image cache (epochs after the first read stored pixels);
* `decode=gpu`: workers read bytes; nvJPEG decodes and the crop/flip/resize run on the GPU.

and, as the model-bound reference, the same `fit` on `data.embedded=synthetic` (GPU-resident, same
number of training images), plus `decode_probe`: the decode=gpu input path alone, stage by stage.
Each variant runs in its own process under a time limit (a hang prints every thread's stack and
the others still run). Throughput: images per second inside epochs, from the second batch of each
epoch to its last (synchronised at both edges), over epochs 2.. (the first fills caches and starts
workers). Ratios are against the synthetic run measured in the same process.

    python benchmarks/gpu_data.py [--images 6000] [--epochs 4] [--budget 150] [--variants ...]
    python benchmarks/gpu_data.py --smoke     # CPU, tiny: checks the script works
"""

from __future__ import annotations

import argparse
import faulthandler
import json
import logging
import os
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent))

import cv2  # noqa: E402
import numpy as np  # noqa: E402
import pytorch_lightning as pl  # noqa: E402
import torch  # noqa: E402

from gpu_fit import extra_callback, sync, versions  # noqa: E402
from transferkit.cli import app as cli  # noqa: E402

log = logging.getLogger("gpu_data")
RESULTS = Path(__file__).resolve().parent / "results" / "gpu_data.json"
CLASSES = 10


def write_jpeg(args: tuple[Path, int, int, int]) -> int:
    """One photo-like JPEG: smooth random colour fields plus fine noise, at a random size."""
    root, index, low, high = args
    rng = np.random.default_rng(index)
    height, width = (int(v) for v in rng.integers(low, high + 1, 2))
    coarse = rng.integers(0, 256, (max(2, height // 24), max(2, width // 24), 3), dtype=np.uint8)
    image = cv2.resize(coarse, (width, height), interpolation=cv2.INTER_CUBIC).astype(np.int16)
    image += rng.normal(0, 6, image.shape).astype(np.int16)
    folder = root / f"class_{index % CLASSES}"
    ok, data = cv2.imencode(".jpg", np.clip(image, 0, 255).astype(np.uint8), [cv2.IMWRITE_JPEG_QUALITY, 90])
    assert ok
    (folder / f"{index:05d}.jpg").write_bytes(data.tobytes())
    return len(data)


def make_folder(root: Path, count: int, low: int, high: int) -> dict:
    start = time.perf_counter()
    for label in range(CLASSES):
        (root / f"class_{label}").mkdir(parents=True, exist_ok=True)
    workers = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    with ProcessPoolExecutor(max_workers=workers) as pool:
        sizes = list(pool.map(write_jpeg, [(root, i, low, high) for i in range(count)], chunksize=32))
    return {"images": count, "mean_kib": round(float(np.mean(sizes)) / 1024, 1), "sides_px": [low, high],
            "seconds": round(time.perf_counter() - start, 2)}


class EpochTimer(pl.Callback):
    """Images per second inside each training epoch: from the start of its second batch to the end of
    its last, with the device synchronised at both edges."""

    def __init__(self, progress: Path | None = None) -> None:
        self.epochs: list[dict] = []
        self.t0 = None
        self.images = 0
        self.progress = progress  # rewritten after every epoch, so a run stopped later keeps its rate

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        self.t0, self.images, self.batches = None, 0, 0

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if batch_idx == 1:
            sync(pl_module.device)
            self.t0 = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if batch_idx >= 1:
            self.images += int(batch[0].shape[0])

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        if self.t0 is not None and self.images:
            sync(pl_module.device)
            seconds = time.perf_counter() - self.t0
            self.epochs.append({"images": self.images, "seconds": round(seconds, 4),
                                "img_per_s": round(self.images / seconds, 1)})
            if self.progress is not None:
                self.progress.write_text(json.dumps({"img_per_s": self.rate(), "epochs": self.epochs,
                                                     "status": "stopped after these epochs"}))

    def rate(self) -> float | None:
        steady = self.epochs[1:] or self.epochs
        seconds = sum(e["seconds"] for e in steady)
        return sum(e["images"] for e in steady) / seconds if seconds else None


def fit_args(a: argparse.Namespace, run_dir: Path, data: list[str]) -> list[str]:
    backbone, size, batch = ("resnet10t", 32, 8) if a.smoke else ("resnet50", 224, 256)
    device = "cpu" if a.smoke else "gpu"
    return [f"model.backbone={backbone}", "model.weights=none", "finetune=full", "model.channels_last=true",
            f"data.image_size={size}", f"data.batch_size={batch}", "data.val_fraction=0.05", "data.test_fraction=0.05",
            f"trainer.max_epochs={a.epochs}", "trainer.precision=bf16-mixed", f"trainer.accelerator={device}",
            "trainer.devices=1", "trainer.enable_progress_bar=false", "trainer.enable_model_summary=false",
            "augment=light", f"run_dir={run_dir}", *(["data.num_workers=2"] if a.smoke else []), *data]


def timed_fit(args: list[str], progress: Path | None = None) -> dict:
    timer = EpochTimer(progress)
    start = time.perf_counter()
    with extra_callback(timer):
        results = cli.run(["fit", *args])
    return {"img_per_s": timer.rate(), "wall_seconds": round(time.perf_counter() - start, 2),
            "epochs": timer.epochs, "status": results.get("status"), "train_size": results["data"]["train_size"]}


def decode_probe(a: argparse.Namespace, root: Path) -> dict:
    """The `data.decode=gpu` input path without training, stage by stage: workers reading the files'
    bytes, nvJPEG decoding one batch, augmenting it, and the whole loader over one epoch."""
    import random as pyrandom

    from transferkit.data.datamodule import ClassificationDataModule
    from transferkit.data.device_augment import DeviceAugment
    from transferkit.data.device_decode import DeviceDecodeLoader, decode_images

    device = torch.device("cpu" if a.smoke else "cuda")
    size, batch = (32, 8) if a.smoke else (224, 256)
    datamodule = ClassificationDataModule(root=str(root), decode="gpu", image_size=size, batch_size=batch,
                                          num_workers=2 if a.smoke else "auto", augment="light",
                                          val_fraction=0.05, test_fraction=0.05)
    datamodule.setup("fit")
    from types import SimpleNamespace

    datamodule.trainer = SimpleNamespace(strategy=SimpleNamespace(root_device=device), num_devices=1, world_size=1,
                                         global_rank=0)
    loader = datamodule.train_dataloader()
    assert isinstance(loader, DeviceDecodeLoader)
    report = {"workers": loader.loader.num_workers, "batches": len(loader)}
    start, images, first = time.perf_counter(), 0, None
    for encoded in loader.loader:  # the workers alone: file bytes per batch
        first = first or encoded
        images += len(encoded.lengths)
    report["read_img_per_s"] = round(images / (time.perf_counter() - start), 1)
    decoded = decode_images(first, device)  # first call: nvJPEG set-up
    sync(device)
    start = time.perf_counter()
    for _ in range(3):
        decoded = decode_images(first, device)
    sync(device)
    report["decode_ms_per_batch"] = round(1000 * (time.perf_counter() - start) / 3, 2)
    pipeline = DeviceAugment("light", True, size, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
    rng = pyrandom.Random(0)
    pipeline(decoded, rng)
    sync(device)
    start = time.perf_counter()
    for _ in range(3):
        pipeline(decoded, rng)
    sync(device)
    report["augment_ms_per_batch"] = round(1000 * (time.perf_counter() - start) / 3, 2)
    for epoch in range(2):  # the whole loader (background thread, side stream); the second epoch counts
        start, images = time.perf_counter(), 0
        for x, _ in loader:
            images += len(x)
        sync(device)
        report[f"loader_epoch{epoch + 1}_img_per_s"] = round(images / (time.perf_counter() - start), 1)
    return report


VARIANTS = ("synthetic", "decode_probe", "decode_cpu_cache", "decode_gpu", "decode_cpu")


def variant_data(name: str, root: Path, train_size: int) -> list[str]:
    return {"synthetic": ["data.embedded=synthetic", "data.synthetic_classes=10",
                          f"data.embedded_length={train_size}"],
            "decode_cpu_cache": [f"data.root={root}", "data.cache=true"],
            "decode_gpu": [f"data.root={root}", "data.decode=gpu", "finetune.head_solver=sgd"],
            "decode_cpu": [f"data.root={root}"]}[name]


def run_variant(a: argparse.Namespace) -> None:
    """Child process: one variant, its result as JSON in `a.result`. A hang prints every thread's stack."""
    faulthandler.dump_traceback_later(max(5.0, a.timeout - 5), exit=True)
    root = Path(a.folder)
    try:
        if a.variant == "decode_probe":
            result = decode_probe(a, root)
        else:
            result = timed_fit(fit_args(a, root.parent / a.variant, variant_data(a.variant, root, a.train_size)),
                               progress=Path(a.result))
    except Exception as err:  # noqa: BLE001 - reported in the JSON
        log.exception("%s failed", a.variant)
        result = {"error": f"{type(err).__name__}: {err}"}
    Path(a.result).write_text(json.dumps(result, default=str))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="CPU, tiny model and folder")
    parser.add_argument("--images", type=int, default=6000)
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--budget", type=float, default=180.0, help="seconds; variants that would not fit are skipped")
    parser.add_argument("--variant-seconds", type=float, default=75.0, help="time limit of one variant's process")
    parser.add_argument("--variants", nargs="*", default=list(VARIANTS), choices=VARIANTS)
    parser.add_argument("--output", type=Path, default=None)
    parser.add_argument("--variant", help=argparse.SUPPRESS)  # child process: run this one
    parser.add_argument("--folder", help=argparse.SUPPRESS)
    parser.add_argument("--result", help=argparse.SUPPRESS)
    parser.add_argument("--train-size", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--timeout", type=float, default=60.0, help=argparse.SUPPRESS)
    a = parser.parse_args()
    if a.smoke:
        a.images, a.epochs = 60, 2
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    for name in ("transferkit", "pytorch_lightning", "lightning", "lightning.pytorch"):
        logging.getLogger(name).setLevel(logging.WARNING)
    if not a.smoke and not torch.cuda.is_available():
        sys.exit("gpu_data.py needs a CUDA GPU; use --smoke on a CPU machine.")
    if torch.cuda.is_available() and not a.smoke:
        torch.backends.cudnn.benchmark = True
    if a.variant:
        run_variant(a)
        return
    output = a.output or (Path(tempfile.gettempdir()) / "gpu_data_smoke.json" if a.smoke else RESULTS)
    deadline = time.perf_counter() + a.budget
    report = {"benchmark": "gpu_data", "smoke": a.smoke, "versions": versions(), "epochs": a.epochs,
              "variants": {}, "skipped": []}
    with tempfile.TemporaryDirectory(prefix="gpu_data_") as tmp:
        root = Path(tmp) / "jpegs"
        report["folder"] = make_folder(root, a.images, *((40, 80) if a.smoke else (256, 500)))
        log.info("folder: %s", report["folder"])
        train_size = round(a.images * 0.9)  # the folder's train split (val and test 5 % each)
        for name in a.variants:
            left = deadline - time.perf_counter()
            if not a.smoke and left < 25:
                report["skipped"].append(name)
                continue
            timeout = min(left, a.variant_seconds if name != "decode_probe" else 40.0) if not a.smoke else 300.0
            result_path = Path(tmp) / f"{name}.json"
            command = [sys.executable, __file__, "--variant", name, "--folder", str(root), "--result",
                       str(result_path), "--train-size", str(train_size), "--epochs", str(a.epochs),
                       "--timeout", str(timeout), *(["--smoke"] if a.smoke else [])]
            start = time.perf_counter()
            try:
                subprocess.run(command, timeout=timeout + 5, check=False)
            except subprocess.TimeoutExpired:
                pass
            result = (json.loads(result_path.read_text()) if result_path.is_file()
                      else {"error": f"no result within {timeout:.0f} s (stacks in the log)"})
            result.setdefault("process_seconds", round(time.perf_counter() - start, 1))
            if name == "synthetic" or "train_size" in result:
                train_size = result.get("train_size", train_size)
            report["variants"][name] = result
            log.info("%s: %s", name, json.dumps({k: v for k, v in result.items() if k != "epochs"})[:400])
            summarise(report)
            output.parent.mkdir(parents=True, exist_ok=True)
            output.write_text(json.dumps(report, indent=2) + "\n")
    log.info("%s", json.dumps({"folder_ratio": report.get("folder_ratio"), "best": report.get("best_input_path"),
                               **{k: round(v.get("img_per_s") or 0) for k, v in report["variants"].items()}}))
    log.info("Wrote %s", output)


def summarise(report: dict) -> None:
    """Each fit variant's rate against the synthetic (model-bound) run, and the best folder path."""
    bound = report["variants"].get("synthetic", {}).get("img_per_s")
    for variant in report["variants"].values():
        if bound and variant.get("img_per_s"):
            variant["ratio_to_model_bound"] = round(variant["img_per_s"] / bound, 4)
    rates = {k: v.get("ratio_to_model_bound") for k, v in report["variants"].items() if k != "synthetic"}
    best = max((v, k) for k, v in rates.items() if v is not None) if any(rates.values()) else (None, None)
    report["best_input_path"], report["folder_ratio"] = best[1], best[0]


if __name__ == "__main__":
    main()
