"""`export`: write the task's inference graph as ONNX, TorchScript or OpenVINO IR (FP32, or INT8 for ONNX and
OpenVINO) into the run directory, check it against the PyTorch model (FP32: parity; INT8: accuracy on the
test split), and keep it (with its `model.meta.json`) only if it passes."""

from __future__ import annotations

import logging
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from transferkit.exporting.accuracy import check_accuracy, describe_accuracy
from transferkit.exporting.formats import (convert_openvino, dynamic_axes, export_onnx, export_torchscript,
                                           save_openvino)
from transferkit.exporting.int8 import float_convs, onnx_speed, quantize_onnx, quantize_openvino
from transferkit.exporting.graph import build_graph, example_input, other_shape_input
from transferkit.exporting.metadata import build_meta
from transferkit.exporting.parity import check_parity, describe
from transferkit.exporting.samples import Samples, parity_batches
from transferkit.exporting.spec import ExportSpec
from transferkit.data.inputs import InputSpec

log = logging.getLogger("transferkit")

PARTIAL_DIR = "partial"  # the files written, before the check decides whether they are kept
CALIBRATION_BATCH = 8


class ParityError(RuntimeError):
    """The exported model does not compute what the PyTorch model computes; it was not kept."""


def write_model(spec: ExportSpec, graph, example, path: Path, axes: dict[int, str],
                calibration: list[np.ndarray], scope: str = "all") -> tuple[int | None, dict | None]:
    """Write `path`; returns the ONNX opset (None for TorchScript) and, for INT8 (`scope`: `all` or
    `branches`), how it was quantized. OpenVINO and INT8 go through the FP32 ONNX file, which is then removed."""
    if spec.format == "torchscript":
        export_torchscript(graph, example, path)
        return None, None
    onnx_path = path if spec.format == "onnx" and not spec.quantize else path.with_name("fp32.onnx")
    opset = export_onnx(graph, example, onnx_path, axes, spec.opset)
    quantization = None
    if spec.format == "onnx" and spec.quantize:
        quantization = quantize_onnx(onnx_path, path, calibration, scope)
        quantization["speed"] = speed = onnx_speed(onnx_path, path, calibration)
        if speed and speed["int8_over_fp32"] < 1.0:
            log.warning("ONNX Runtime runs this INT8 model (scope %s) at %.2fx the FP32 model's images/s on this CPU "
                        "(batch %d): slower, not faster. For a faithful and faster INT8 model use format=openvino "
                        "export.quantize=int8; export.int8_scope=all is faster under ONNX Runtime but keeps fewer "
                        "top-1 classes.", scope, speed["int8_over_fp32"], speed["batch"])
    elif spec.format == "openvino":
        model = convert_openvino(onnx_path)
        if spec.quantize:
            kept = float_convs(onnx_path) if scope == "branches" else None
            model, quantization = quantize_openvino(model, calibration, kept)
        save_openvino(model, path)
    if onnx_path != path:
        onnx_path.unlink()
    return opset, quantization


def calibration_batches(calibration: Samples | None, inputs: InputSpec, uint8_input: bool) -> list[np.ndarray]:
    """The exported model's inputs for the INT8 calibration images (none without quantization)."""
    if calibration is None:
        return []
    where, count, items = calibration
    log.info("Calibrating INT8 ranges on %s (%d images) ...", where, count)
    return [prepared.numpy() for _, _, prepared, _ in parity_batches(items, inputs, uint8_input, CALIBRATION_BATCH)]


def check_int8(max_drop: float, graph, exported, batches, other) -> dict:
    """The INT8 rule (accuracy within `max_drop` points of the checkpoint's) and a run on another shape."""
    report = check_accuracy(graph.network, exported, batches, max_drop)
    with torch.inference_mode():
        shape_ok = np.asarray(exported(other)).shape == tuple(graph(other).shape)
    log.info("INT8 accuracy: %s; another shape %s: %s", describe_accuracy(report), tuple(other.shape),
             "runs" if shape_ok else "FAILED")
    return {**report, "other_shape": {"shape": list(other.shape), "passed": bool(shape_ok)}}


def check_fp32(kind: str, graph, exported, batches, other) -> dict:
    """The FP32 rule (logits within tolerance, argmax agreeing) on the samples and on another shape."""
    report = check_parity(kind, graph.network, exported, batches)
    shape_report = check_parity(kind, graph, exported, [([f"random {tuple(other.shape)}"] * len(other), other, other)])
    log.info("Parity: %s; another shape %s: %s", describe(report), tuple(other.shape),
             "passed" if shape_report["passed"] else "FAILED")
    return {**report, "other_shape": {"shape": list(other.shape), "passed": shape_report["passed"],
                                      "max_abs_logit_diff": shape_report["max_abs_logit_diff"]}}


def choose_scope(spec: ExportSpec, write: Callable[[str], Callable], graph, choice: Samples, inputs: InputSpec,
                 uint8_input: bool) -> tuple[Callable, dict]:
    """`export.int8_scope=auto`: quantize everything (`all`, the fastest), and keep it when it keeps the
    checkpoint's top-1 class on at least `export.min_agreement` % of the `choice` images (the validation
    split: the test split stays for the check); else quantize the residual branches only (`branches`,
    which flips fewer near-ties; benchmarks/results/int8_scope.md). `write(scope)` writes the model and
    returns it loaded. Returns the model kept and how it was chosen (model.meta.json)."""
    exported = write("all")
    where, count, items = choice
    report = check_accuracy(graph.network, exported, parity_batches(items, inputs, uint8_input, spec.batch_size),
                            spec.max_drop)
    agreement = round(100 * report["top1_agreement"], 2)
    record = {"chosen_on": where, "images": report["images"], "min_agreement": spec.min_agreement,
              "agreement": {"all": agreement}}
    if agreement >= spec.min_agreement:
        log.info("export.int8_scope=auto: scope all keeps the checkpoint's top-1 class on %.2f %% of %s (>= "
                 "export.min_agreement=%g): keeping it.", agreement, where, spec.min_agreement)
        return exported, {**record, "chosen": "all"}
    log.info("export.int8_scope=auto: scope all keeps the checkpoint's top-1 class on only %.2f %% of %s (< "
             "export.min_agreement=%g): quantizing the residual branches only (export.int8_scope=branches) ...",
             agreement, where, spec.min_agreement)
    del exported
    return write("branches"), {**record, "chosen": "branches"}


def export_model(spec: ExportSpec, task, samples: Samples, run_dir: Path,
                 load_exported: Callable[[Path, dict], Callable],
                 calibration: Samples | None = None, choice: Samples | None = None) -> tuple[dict, dict | None]:
    """Export `task` into `run_dir` and check it on `samples` (FP32: parity; INT8, calibrated on
    `calibration`: accuracy; `export.int8_scope=auto` chooses the scope on `choice`); `load_exported(path,
    meta)` runs the written file. Returns results.json (no `wall_seconds` yet; `status` completed or
    failed) and the metadata to write beside the kept model (None when the check failed and nothing was kept)."""
    kind, fmt, uint8_input = task.kind, spec.format, spec.include_preprocessing
    inputs = InputSpec.from_data_config(task.hparams.data_config)
    graph, axes = build_graph(task, inputs, uint8_input), dynamic_axes(kind, uint8_input)
    partial = run_dir / PARTIAL_DIR  # its files are moved into place only once the check passed
    partial.mkdir(exist_ok=True)
    log.info("Exporting %s (%s%s, %s input) to %s ...", kind, fmt, f" {spec.quantize}" if spec.quantize else "",
             "uint8 NHWC" if uint8_input else "float32 NCHW", spec.file_name)
    example, batches_in = example_input(inputs, uint8_input, kind), calibration_batches(calibration, inputs, uint8_input)
    meta = {}

    def write(scope: str) -> Callable:
        opset, quantization = write_model(spec, graph, example, partial / spec.file_name, axes, batches_in, scope)
        meta.clear()
        meta.update(build_meta(task, kind, inputs, Path(spec.checkpoint), fmt, spec.file_name, opset, uint8_input,
                               axes, spec.quantize))
        if quantization is not None:
            meta["quantization"] = {**quantization, "calibration": {"on": calibration[0], "images": calibration[1]}}
        return load_exported(partial / spec.file_name, dict(meta))

    if spec.quantize and spec.int8_scope == "auto" and choice is not None:
        exported, chosen = choose_scope(spec, write, graph, choice, inputs, uint8_input)
        meta["quantization"]["auto"] = chosen
    else:
        exported = write("branches" if spec.int8_scope == "auto" else spec.int8_scope)  # auto, unmeasured: the faithful one
    where, count, items = samples
    log.info("Checking %s on %s (%d images) ...", "INT8 accuracy" if spec.quantize else "parity", where, count)
    batches = parity_batches(items, inputs, uint8_input, spec.batch_size, spec.parity_max_images)
    other = other_shape_input(inputs, uint8_input, kind)
    key = "accuracy" if spec.quantize else "parity"
    report = (check_int8(spec.max_drop, graph, exported, batches, other) if spec.quantize
              else check_fp32(kind, graph, exported, batches, other))
    meta[key] = {"on": where, **report}
    results = {"command": "export", "status": "completed", "task": kind, "format": fmt, "quantize": spec.quantize,
               "checkpoint": spec.checkpoint, key: meta[key], "run_dir": str(run_dir)}
    if spec.quantize:
        results["quantization"] = {k: v for k, v in meta["quantization"].items() if k in ("scope", "auto")}
    if not (meta[key]["passed"] and meta[key]["other_shape"]["passed"]):
        shutil.rmtree(partial)
        return {**results, "status": "failed"}, None
    for path in sorted(partial.iterdir()):
        path.replace(run_dir / path.name)
    partial.rmdir()
    return results, meta


def failure_message(fmt: str, results: dict, run_dir: Path) -> str:
    """Why the exported model was not kept: the parity (or INT8 accuracy) numbers and the first
    disagreeing images."""
    if "accuracy" in results:
        return int8_refusal(fmt, results["accuracy"], run_dir, results.get("quantization", {}).get("scope"))
    parity = results["parity"]
    firsts = "; ".join(", ".join(f"{k} {v}" for k, v in item.items()) for item in parity["first_failures"])
    text = f"format={fmt}: the exported model disagrees with the PyTorch model on {parity['on']}: {describe(parity)}"
    if firsts:
        text += f". First disagreeing: {firsts}"
    other = parity["other_shape"]
    if not other["passed"]:
        text += (f". On input of another shape {tuple(other['shape'])}: max |dlogit| "
                 f"{other['max_abs_logit_diff']:.3g}")
    return text + f". Nothing was kept (numbers in {run_dir / 'results.json'})."


def int8_refusal(fmt: str, accuracy: dict, run_dir: Path, scope: str | None = None) -> str:
    text = f"format={fmt} export.quantize=int8 was refused on {accuracy['on']}: {describe_accuracy(accuracy)}"
    if not accuracy["other_shape"]["passed"]:
        text += f"; on input of another shape {tuple(accuracy['other_shape']['shape'])} the output shape was wrong"
    branches = "quantize less (export.int8_scope=branches), " if scope == "all" else ""
    return (text + f". Raise export.max_drop to accept it, {branches}calibrate on more images "
            "(export.calibration_images), or ship the FP32 model. Nothing was kept (numbers in "
            f"{run_dir / 'results.json'}).")
