"""Inference images/s on CPU: predict from the checkpoint, from ONNX Runtime, from TorchScript, and a
plain timm eval loop, side by side in one run on the same image files.

A folder of photo-like JPEGs is generated in a temp dir, a small model is fitted on it through the
CLI (`fit recipe=small_similar model.weights=charnet`: resnet10t, grey, 32 px, by default) and
exported (`export format=onnx`, `format=torchscript`). Then each method predicts every file, at
batch 1 and batch 64, with the same number of loader workers, in rounds A B C D A B C D; a short
warm-up pass per method first, and model loading is not timed (start-up excluded). Each timed pass
is what `predict` runs after loading the model: list the files, decode and prepare them in loader
workers, run the model, write the CSV. The plain loop is a timm model with the same weights, a
`timm.data.create_transform` eval transform on PIL images, a DataLoader and softmax. Goal (issue
11): predict from the checkpoint >= 0.9x the plain loop at batch 64.

    python benchmarks/inference_speed.py --images 300 --workers 2 --rounds 2 [--note "..."]

`--formats`: instead, the export-format table (benchmarks/format_speed.py): format (PyTorch, ONNX Runtime
FP32/INT8, OpenVINO FP32/INT8) x batch size (1, 8, 64) -> images/s of the model alone and accuracy, for
the house backbone on a real folder and resnet50 at 224 px; results/inference_formats.json and .md.

    python benchmarks/inference_speed.py --formats --rounds 3 [--smoke]
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

import sys  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402
from torch.utils.data import DataLoader, Dataset  # noqa: E402

from transferkit.cli import app as cli  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
import format_speed  # noqa: E402 - benchmarks/ is not a package

log = logging.getLogger("inference_speed")
RESULTS = Path(__file__).resolve().parent / "results"
METHODS = ("predict (checkpoint)", "ONNX Runtime", "TorchScript", "plain timm loop")


def write_jpeg_folder(root: Path, images: int, classes: int, size: tuple[int, int], seed: int = 0) -> list[Path]:
    """Photo-like JPEGs (smooth colour fields, mild noise; a class-dependent tint) at `size` (W, H)."""
    rng = np.random.default_rng(seed)
    width, height = size
    paths = []
    for i in range(images):
        label = i % classes
        folder = root / f"class_{label}"
        folder.mkdir(parents=True, exist_ok=True)
        coarse = rng.integers(0, 200, (height // 16, width // 16, 3), dtype=np.uint8)
        coarse[..., label % 3] += 55
        base = np.asarray(Image.fromarray(coarse).resize((width, height), Image.BICUBIC), dtype=np.int16)
        noisy = np.clip(base + rng.integers(-12, 13, base.shape), 0, 255).astype(np.uint8)
        paths.append(folder / f"{i:05d}.jpg")
        Image.fromarray(noisy).save(paths[-1], quality=90)
    return sorted(paths)


class PlainDataset(Dataset):
    """What a plain timm eval script does: PIL decode, the model's channels, timm's eval transform."""

    def __init__(self, paths: list[Path], mode: str, transform) -> None:
        self.paths, self.mode, self.transform = paths, mode, transform

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> torch.Tensor:
        with Image.open(self.paths[index]) as image:
            return self.transform(image.convert(self.mode))


def plain_timm_model(task) -> torch.nn.Module:
    """timm's own model with the fitted weights: the encoder's, plus the head's Linear as `fc`."""
    import timm

    model_cfg = task.hparams.model
    model = timm.create_model(model_cfg["backbone"], pretrained=False, in_chans=task.hparams.data_config["in_chans"],
                              num_classes=len(task.class_names))
    linear = [m for m in task.head.modules() if isinstance(m, torch.nn.Linear)][-1]
    state = {**task.encoder.state_dict(), "fc.weight": linear.weight, "fc.bias": linear.bias}
    model.load_state_dict(state, strict=True)
    return model.eval()


def plain_loop(model, paths: list[Path], data: dict, batch_size: int, workers: int) -> np.ndarray:
    from timm.data import create_transform

    size = data["image_size"]
    transform = create_transform(input_size=(data["in_chans"], size, size), interpolation=data["interpolation"],
                                 mean=tuple(data["mean"]), std=tuple(data["std"]), crop_pct=1.0)
    mode = "L" if data["in_chans"] == 1 else "RGB"
    loader = DataLoader(PlainDataset(paths, mode, transform), batch_size=batch_size, num_workers=workers)
    out = []
    with torch.inference_mode():
        for images in loader:
            out.append(model(images).softmax(-1).numpy())
    return np.concatenate(out)


def fit_and_export(root: Path, work: Path, workers: int, extra: list[str]) -> tuple[Path, Path, Path]:
    common = ["trainer.accelerator=cpu", "trainer.devices=1", "trainer.enable_progress_bar=false",
              "trainer.enable_model_summary=false", f"data.num_workers={workers}"]
    fit = cli.run(["fit", "recipe=small_similar", f"data.root={root}", "model.weights=charnet", *common, *extra,
                   f"run_dir={work / 'fit'}"])
    ckpt = Path(fit["best_checkpoint"])
    onnx = cli.run(["export", f"ckpt_path={ckpt}", "format=onnx", f"run_dir={work / 'onnx'}"])
    script = cli.run(["export", f"ckpt_path={ckpt}", "format=torchscript", f"run_dir={work / 'ts'}"])
    return ckpt, Path(onnx["model"]), Path(script["model"])


def timed(run, images: int) -> float:
    start = time.perf_counter()
    run()
    return images / (time.perf_counter() - start)


def measure(args: argparse.Namespace, work: Path) -> dict:
    from transferkit.inference.predictor import exported_predictor, predict_files, task_predictor
    from transferkit.tasks.loading import load_task

    paths = write_jpeg_folder(work / "images", args.images, args.classes, tuple(args.source_size))
    ckpt, onnx_path, ts_path = fit_and_export(work / "images", work, args.workers, args.fit_override)
    task = load_task(ckpt)  # start-up (imports, model loading) happens here, outside the timing
    predictors = {"predict (checkpoint)": task_predictor(task), "ONNX Runtime": exported_predictor(onnx_path),
                  "TorchScript": exported_predictor(ts_path)}
    plain = plain_timm_model(task)
    data = dict(task.hparams.data_config)
    csv_dir = work / "csv"
    csv_dir.mkdir()

    def runner(method: str, batch: int, files: list[Path]):
        if method == "plain timm loop":
            return lambda: plain_loop(plain, files, data, batch, args.workers)
        name = csv_dir / f"{len(list(csv_dir.iterdir()))}.csv"
        return lambda: predict_files(predictors[method], files, csv_dir, name, 3, batch, args.workers)

    rates: dict[str, dict[int, list[float]]] = {m: {b: [] for b in args.batch_sizes} for m in METHODS}
    for batch in args.batch_sizes:
        for method in METHODS:  # warm-up: thread pools, lazy inits, page cache
            runner(method, batch, paths[: max(batch, 16)])()
        for _ in range(args.rounds):
            for method in METHODS:
                rates[method][batch].append(round(timed(runner(method, batch, paths), len(paths)), 1))
                log.info("batch %3d  %-22s %8.1f images/s", batch, method, rates[method][batch][-1])
    median = {m: {b: statistics.median(r) for b, r in per.items()} for m, per in rates.items()}
    ratio = {b: round(median["predict (checkpoint)"][b] / median["plain timm loop"][b], 2) for b in args.batch_sizes}
    return {"model": {"backbone": task.hparams.model["backbone"], "input": data, "checkpoint": str(ckpt)},
            "images": len(paths), "source_size": list(args.source_size), "workers": args.workers,
            "rounds": args.rounds, "images_per_s": rates, "median_images_per_s": median,
            "predict_vs_plain": ratio, "goal": "predict (checkpoint) >= 0.9x plain timm loop at batch 64"}


def machine(note: str | None) -> dict:
    import onnxruntime

    return {"platform": platform.platform(), "processor": platform.processor(), "cpus": os.cpu_count(),
            "torch_threads": torch.get_num_threads(), "load_average": list(os.getloadavg()),
            "python": platform.python_version(), "torch": torch.__version__, "onnxruntime": onnxruntime.__version__,
            "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "note": note}


def markdown(result: dict) -> str:
    batches = sorted(next(iter(result["median_images_per_s"].values())))
    lines = [f"### Inference images/s on CPU ({result['images']} JPEGs {result['source_size'][0]}x"
             f"{result['source_size'][1]}, {result['model']['backbone']} {result['model']['input']['in_chans']} ch "
             f"{result['model']['input']['image_size']} px, {result['workers']} loader workers; median of "
             f"{result['rounds']} rounds)", "",
             "| method | " + " | ".join(f"batch {b}" for b in batches) + " |",
             "|---|" + "---|" * len(batches)]
    for method, per in result["median_images_per_s"].items():
        lines.append(f"| {method} | " + " | ".join(f"{per[b]:.1f}" if per[b] < 10 else f"{per[b]:.0f}"
                                                    for b in batches) + " |")
    lines.append("| predict / plain | " + " | ".join(f"{result['predict_vs_plain'][b]:.2f}x" for b in batches) + " |")
    m = result["machine"]
    lines += ["", f"{m['platform']}, {m['cpus']} CPUs, torch {m['torch']}, onnxruntime {m['onnxruntime']}, "
              f"load average {m['load_average'][0]:.1f}, {m['date']}." + (f" {m['note']}" if m["note"] else "")]
    return "\n".join(lines) + "\n"


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=300)
    parser.add_argument("--classes", type=int, default=4)
    parser.add_argument("--source-size", type=int, nargs=2, default=(500, 375), metavar=("W", "H"))
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--batch-sizes", type=int, nargs="+", help="default 1 64 (--formats: 1 8 64)")
    parser.add_argument("--formats", action="store_true", help="the export-format table instead (model alone)")
    parser.add_argument("--calibration-images", type=int, default=64, help="--formats: resnet50's INT8 calibration")
    parser.add_argument("--smoke", action="store_true", help="--formats in a minute: resnet10t at 64 px, 1 round")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--fit-override", nargs="*", default=[], help="extra fit overrides, e.g. model=resnet18")
    parser.add_argument("--note", help="recorded with the numbers, e.g. 'measured under load'")
    parser.add_argument("--output", type=Path)
    args = parser.parse_args()
    args.batch_sizes = args.batch_sizes or ((1, 8) if args.smoke else (1, 8, 64) if args.formats else (1, 64))
    args.rounds = 1 if args.smoke else args.rounds
    args.calibration_images = 16 if args.smoke else args.calibration_images
    args.output = args.output or RESULTS / ("inference_formats.json" if args.formats else "inference_speed.json")
    return args


def main() -> None:
    cli.configure_logging(debug=False)
    args = parse_args()
    with tempfile.TemporaryDirectory(prefix="inference_speed_") as tmp:
        result = format_speed.measure_formats(args, Path(tmp)) if args.formats else measure(args, Path(tmp))
    result["machine"] = machine(args.note)
    text = format_speed.formats_markdown(result, result["machine"]) if args.formats else markdown(result)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(result, indent=1))
    args.output.with_suffix(".md").write_text(text)
    log.info("\n%s", text)


if __name__ == "__main__":
    main()
