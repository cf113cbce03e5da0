"""The export-format table of `benchmarks/inference_speed.py --formats`: format x batch size -> images/s of
the model alone (decoded, prepared tensors in memory; file decoding, which dominates end-to-end CPU
predict, is left out), and accuracy.

Two models:
* the house backbone (charnet: resnet10t, grey, 32 px) fitted by `fit recipe=small_similar` on the real
  `symbols` folder (`benchmarks/photo_sets.py`: math symbols rendered in fonts, fonts split), exported by
  `python -m transferkit export` in every format; accuracy and top-1 agreement with the checkpoint on its
  test split (600 images), and speed;
* resnet50 at 224 px (3 channels), random init (nothing is downloaded), whose cost is compute: speed only.
  Exported with the same functions `export` uses (torch.onnx.export, quantize_onnx, convert_openvino,
  quantize_openvino), INT8 calibrated on symbols training images resized to 224 px.

Speed: rounds of A B C D E (every format in turn, per batch size), after a warm-up pass; the median over
rounds of images/s, and the median of the per-round ratios to ONNX Runtime FP32 (each ratio from two
timings taken side by side). Threads: each runtime's default, as a CPU deployment runs it: torch
intra-op threads = ONNX Runtime intra-op threads = OpenVINO INFERENCE_NUM_THREADS = the cores (recorded).
"""

from __future__ import annotations

import logging
import os
import statistics
import time
from pathlib import Path

import numpy as np
import torch

from transferkit.cli import app as cli

log = logging.getLogger("inference_speed")
FORMATS = ("PyTorch (checkpoint)", "ONNX Runtime FP32", "ONNX Runtime INT8", "ONNX Runtime INT8 all",
           "OpenVINO FP32", "OpenVINO INT8", "OpenVINO INT8 all")
# (format, quantize, export.int8_scope): the plain INT8 rows are export's default, auto (the house model: whichever
# scope export chose on its val split, recorded; resnet50, random init, speed only: branches, what auto falls back to)
EXPORTS = {"ONNX Runtime FP32": ("onnx", None, None), "ONNX Runtime INT8": ("onnx", "int8", "auto"),
           "ONNX Runtime INT8 all": ("onnx", "int8", "all"), "OpenVINO FP32": ("openvino", None, None),
           "OpenVINO INT8": ("openvino", "int8", "auto"), "OpenVINO INT8 all": ("openvino", "int8", "all")}
BASELINE = "ONNX Runtime FP32"


def decoded_split(root: Path, split: str, spec, limit: int | None = None) -> tuple[torch.Tensor, np.ndarray, list[str]]:
    """Every image of `<root>/<split>/<class>/` decoded and prepared as predict prepares it."""
    from transferkit.data.decode import load_image

    classes = sorted(p.name for p in (root / split).iterdir() if p.is_dir())
    paths = sorted((root / split).rglob("*.png"))[:limit]
    transform = spec.eval_transform()
    tensors = torch.stack([transform(image=load_image(p, in_chans=spec.in_chans))["image"] for p in paths])
    return tensors, np.array([classes.index(p.parent.name) for p in paths]), classes


def house_models(set_root: Path, work: Path, smoke: bool) -> tuple[dict, object, dict]:
    """Fit the house model on the real folder and export it in every format through the CLI."""
    from transferkit.exporting.graph import task_network
    from transferkit.inference.exported import load_exported
    from transferkit.tasks.loading import load_task

    common = ["trainer.accelerator=cpu", "trainer.devices=1", "trainer.enable_progress_bar=false",
              "trainer.enable_model_summary=false", "data.num_workers=0"] + (["trainer.max_epochs=2"] if smoke else [])
    fit = cli.run(["fit", "recipe=small_similar", f"data.root={set_root}", "model.weights=charnet", *common,
                   f"run_dir={work / 'fit'}"])
    ckpt = Path(fit["best_checkpoint"])
    models, checks, chosen = {}, {}, {}
    for name, (fmt, quantize, scope) in EXPORTS.items():
        # max_drop=100: keep the file whatever its accuracy, so the table shows it (the default refuses > 1 point)
        extra = [f"export.quantize={quantize}", "export.max_drop=100", f"export.int8_scope={scope}"] if quantize else []
        out = cli.run(["export", f"ckpt_path={ckpt}", f"format={fmt}", *extra, f"run_dir={work / name.replace(' ', '_')}"])
        models[name] = load_exported(out["model"])
        checks[name] = out.get("accuracy") or out["parity"]
        if scope == "auto":
            chosen[name] = out["quantization"]["auto"]
    task = load_task(ckpt)
    network = task_network(task).eval()
    models["PyTorch (checkpoint)"] = lambda batch: network(torch.as_tensor(batch)).numpy()
    return models, models[BASELINE].spec, {"checkpoint": str(ckpt), "export_checks": checks, "auto_scope": chosen,
                                           "backbone": task.hparams.model["backbone"]}


def big_models(backbone: str, size: int, calibration: np.ndarray, work: Path) -> dict:
    """`backbone` from random init at `size` px, written in every format by export's own functions."""
    import timm

    from transferkit.data.inputs import InputSpec
    from transferkit.exporting.formats import convert_openvino, export_onnx, save_openvino
    from transferkit.exporting.graph import InferenceGraph
    from transferkit.exporting.int8 import float_convs, quantize_onnx, quantize_openvino
    from transferkit.inference.exported import ExportedModel

    work.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    network = timm.create_model(backbone, pretrained=False, num_classes=10).eval()
    graph = InferenceGraph(network).eval()
    fp32 = work / f"{backbone}.onnx"
    export_onnx(graph, torch.randn(2, 3, size, size), fp32, {0: "batch"}, 18)
    quantize_onnx(fp32, work / f"{backbone}.int8.onnx", list(calibration), "branches")
    quantize_onnx(fp32, work / f"{backbone}.all.int8.onnx", list(calibration), "all")
    save_openvino(convert_openvino(fp32), work / f"{backbone}.xml")
    kept = float_convs(fp32)
    save_openvino(quantize_openvino(convert_openvino(fp32), list(calibration), kept)[0], work / f"{backbone}.int8.xml")
    save_openvino(quantize_openvino(convert_openvino(fp32), list(calibration), None)[0], work / f"{backbone}.all.int8.xml")
    spec = InputSpec(size, 3, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
    meta = {"task": "classification", "class_names": [str(i) for i in range(10)], "input": spec.to_dict()}
    files = {"ONNX Runtime FP32": fp32, "ONNX Runtime INT8": work / f"{backbone}.int8.onnx",
             "ONNX Runtime INT8 all": work / f"{backbone}.all.int8.onnx",
             "OpenVINO FP32": work / f"{backbone}.xml", "OpenVINO INT8": work / f"{backbone}.int8.xml",
             "OpenVINO INT8 all": work / f"{backbone}.all.int8.xml"}
    models = {name: ExportedModel(path, {**meta, "export": {"format": EXPORTS[name][0]}}) for name, path in files.items()}
    models["PyTorch (checkpoint)"] = lambda batch: network(torch.as_tensor(batch)).numpy()
    return models


def logits(model, images: torch.Tensor, batch: int = 64) -> np.ndarray:
    with torch.inference_mode():
        return np.concatenate([np.asarray(model(images[i:i + batch].numpy())) for i in range(0, len(images), batch)])


def accuracy_rows(models: dict, images: torch.Tensor, labels: np.ndarray) -> dict:
    reference = logits(models["PyTorch (checkpoint)"], images).argmax(1)
    rows = {}
    for name in FORMATS:
        top = logits(models[name], images).argmax(1)
        rows[name] = {"accuracy": round(100 * float((top == labels).mean()), 2),
                      "agreement_with_checkpoint": round(100 * float((top == reference).mean()), 2)}
    return rows


def speed_table(models: dict, images: torch.Tensor, batch_sizes: list[int], rounds: int, per_batch: dict) -> dict:
    """images/s per format and batch size: rounds of every format in turn, medians and per-round ratios."""
    rates = {name: {b: [] for b in batch_sizes} for name in FORMATS}
    load = {b: [] for b in batch_sizes}  # the 1-minute load average at the start of each round
    for b in batch_sizes:
        count = per_batch[b]
        batches = [images[(i * b) % len(images):][:b].numpy() for i in range(max(1, count // b))]
        batches = [x if len(x) == b else images[:b].numpy() for x in batches]
        with torch.inference_mode():
            for name in FORMATS:  # warm-up: thread pools, lazy inits, shape-specialised kernels
                models[name](batches[0])
            for _ in range(rounds):
                load[b].append(round(os.getloadavg()[0], 2))
                for name in FORMATS:
                    start = time.perf_counter()
                    for x in batches:
                        models[name](x)
                    rates[name][b].append(round(len(batches) * b / (time.perf_counter() - start), 2))
                    log.info("batch %3d  %-22s %8.1f images/s", b, name, rates[name][b][-1])
    median = {n: {b: statistics.median(r) for b, r in per.items()} for n, per in rates.items()}
    ratio = {n: {b: round(statistics.median(x / y for x, y in zip(rates[n][b], rates[BASELINE][b])), 2)
                 for b in batch_sizes} for n in FORMATS}
    return {"images_per_s": rates, "median_images_per_s": median, "ratio_to_onnx_fp32": ratio,
            "load_average_per_round": load}


def thread_settings(models: dict) -> dict:
    import onnxruntime

    import openvino as ov

    from transferkit.inference.exported import OPENVINO_CONFIG

    compiled = ov.Core().compile_model(str(models["OpenVINO FP32"].path), "CPU", OPENVINO_CONFIG)
    options = onnxruntime.SessionOptions()
    return {"torch_intra_op_threads": torch.get_num_threads(),
            "onnxruntime_intra_op_threads": "default (0 = one per physical core: 2)",
            "onnxruntime_session": {"graph_optimization_level": str(options.graph_optimization_level),
                                    "execution_mode": str(options.execution_mode), "intra_op_spinning": "default (on)"},
            "openvino_inference_num_threads": compiled.get_property("INFERENCE_NUM_THREADS"),
            "openvino_precision": str(compiled.get_property("INFERENCE_PRECISION_HINT")),
            "openvino_runtime": {key: str(compiled.get_property(key)) for key in
                                 ("PERFORMANCE_HINT", "NUM_STREAMS", "ENABLE_CPU_PINNING", "SCHEDULING_CORE_TYPE")},
            "onnxruntime": onnxruntime.__version__, "openvino": ov.__version__}


def measure_formats(args, work: Path) -> dict:
    import photo_sets  # noqa: E402 - benchmarks/ is not a package (on sys.path when run as a script)

    set_root = photo_sets.build_set("symbols", work / "sets")
    house, spec, record = house_models(set_root, work / "house", args.smoke)
    test_images, test_labels, _ = decoded_split(set_root, "test", spec)
    house_result = {**record, "input": spec.to_dict(), "test_images": len(test_images),
                    "accuracy": accuracy_rows(house, test_images, test_labels),
                    **speed_table(house, test_images, args.batch_sizes, args.rounds,
                                  {b: max(b, 256) for b in args.batch_sizes})}
    size, backbone = (64, "resnet10t") if args.smoke else (224, "resnet50")
    from transferkit.data.inputs import InputSpec

    rgb = InputSpec(size, 3, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
    calibration, _, _ = decoded_split(set_root, "train", rgb, limit=args.calibration_images)
    speed_images, _, _ = decoded_split(set_root, "test", rgb, limit=max(args.batch_sizes))
    big = big_models(backbone, size, calibration.numpy().reshape(-1, 8, 3, size, size), work / "big")
    per_batch = {b: b * (2 if b >= 64 else 8 if b >= 8 else 16) for b in args.batch_sizes}
    big_result = {"backbone": backbone, "image_size": size, "weights": "random init (speed only)",
                  "calibration_images": len(calibration),
                  **speed_table(big, speed_images, args.batch_sizes, args.rounds, per_batch)}
    return {"house": house_result, "compute_bound": big_result, "threads": thread_settings(house),
            "rounds": args.rounds, "batch_sizes": list(args.batch_sizes)}


def load_range(result: dict) -> str:
    loads = [x for key in ("house", "compute_bound") for per in result[key]["load_average_per_round"].values() for x in per]
    return f"{min(loads):.1f}-{max(loads):.1f}"


def formats_markdown(result: dict, machine: dict) -> str:
    batches = result["batch_sizes"]
    lines = []
    for key, title in (("compute_bound", "{backbone} {image_size} px, random init: speed only"),
                       ("house", "house backbone {backbone} (grey 32 px) fitted on the real `symbols` folder")):
        part = result[key]
        lines += [f"**{title.format(**part)}**", "",
                  "| format | " + " | ".join(f"batch {b} images/s (x ONNX FP32)" for b in batches)
                  + (" | test accuracy % | agreement with checkpoint % |" if key == "house" else " |"),
                  "|---|" + "---|" * (len(batches) + (2 if key == "house" else 0))]
        for name in FORMATS:
            cells = [f"{part['median_images_per_s'][name][b]:.1f} ({part['ratio_to_onnx_fp32'][name][b]:.2f}x)"
                     for b in batches]
            if key == "house":
                acc = part["accuracy"][name]
                cells += [f"{acc['accuracy']:.2f}", f"{acc['agreement_with_checkpoint']:.2f}"]
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
        if key == "house":
            lines += ["export.int8_scope=auto (the plain INT8 rows): " + "; ".join(
                f"{name} kept `{c['chosen']}` (scope all kept the checkpoint's top-1 class on {c['agreement']['all']:.2f} % "
                f"of the {c['images']} validation images; the bar is {c['min_agreement']:g} %)"
                for name, c in part["auto_scope"].items()) + ". On resnet50 the plain INT8 rows are `branches`."]
        lines.append("")
    t = result["threads"]
    lines.append(f"Model alone on decoded tensors, median of {result['rounds']} interleaved rounds; ratios are medians of "
                 f"per-round ratios. Threads: torch {t['torch_intra_op_threads']}, ONNX Runtime default (one per "
                 f"core), OpenVINO {t['openvino_inference_num_threads']} (f32 precision hint). {machine['platform']}, "
                 f"{machine['cpus']} CPUs, load average {machine['load_average'][0]:.1f} at the end "
                 f"({load_range(result)} at the rounds' starts), {machine['date']}.")
    return "\n".join(lines) + "\n"
