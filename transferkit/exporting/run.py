"""`export`: write the task's inference graph as ONNX or TorchScript into the run directory, check it
against the PyTorch model (parity), and keep it (with its `model.meta.json`) only if it passes."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

from transferkit.exporting.formats import dynamic_axes, export_onnx, export_torchscript
from transferkit.exporting.graph import build_graph, example_input, other_shape_input
from transferkit.exporting.metadata import build_meta
from transferkit.exporting.parity import check_parity, describe
from transferkit.exporting.samples import Samples, parity_batches
from transferkit.exporting.spec import ExportSpec
from transferkit.data.inputs import InputSpec

log = logging.getLogger("transferkit")


class ParityError(RuntimeError):
    """The exported model does not compute what the PyTorch model computes; it was not kept."""


def write_model(fmt: str, graph, example, path: Path, axes: dict[int, str], opset: int) -> int | None:
    if fmt == "onnx":
        return export_onnx(graph, example, path, axes, opset)
    export_torchscript(graph, example, path)
    return None


def export_model(spec: ExportSpec, task, samples: Samples, run_dir: Path,
                 load_exported: Callable[[Path, dict], Callable]) -> tuple[dict, dict | None]:
    """Export `task` into `run_dir` and check parity on `samples`; `load_exported(path, meta)` runs the
    written file. Returns results.json (no `wall_seconds` yet; `status` completed or failed) and the
    metadata to write beside the kept model (None when parity failed and nothing was kept)."""
    kind, fmt, uint8_input = task.kind, spec.format, spec.include_preprocessing
    inputs = InputSpec.from_data_config(task.hparams.data_config)
    graph, axes = build_graph(task, inputs, uint8_input), dynamic_axes(kind, uint8_input)
    partial = run_dir / f"partial-{spec.file_name}"  # moved into place only once parity passed
    log.info("Exporting %s (%s, %s input) to %s ...", kind, fmt, "uint8 NHWC" if uint8_input else "float32 NCHW",
             spec.file_name)
    opset = write_model(fmt, graph, example_input(inputs, uint8_input, kind), partial, axes, spec.opset)
    meta = build_meta(task, kind, inputs, Path(spec.checkpoint), fmt, spec.file_name, opset, uint8_input, axes)
    exported = load_exported(partial, meta)
    where, count, items = samples
    log.info("Checking parity on %s (%d images) ...", where, count)
    batches = parity_batches(items, inputs, uint8_input, spec.batch_size, spec.parity_max_images)
    report = check_parity(kind, graph.network, exported, batches)
    other = other_shape_input(inputs, uint8_input, kind)
    shape_report = check_parity(kind, graph, exported, [([f"random {tuple(other.shape)}"] * len(other), other, other)])
    meta["parity"] = {"on": where, **report,
                      "other_shape": {"shape": list(other.shape), "passed": shape_report["passed"],
                                      "max_abs_logit_diff": shape_report["max_abs_logit_diff"]}}
    log.info("Parity: %s; another shape %s: %s", describe(report), tuple(other.shape),
             "passed" if shape_report["passed"] else "FAILED")
    results = {"command": "export", "status": "completed", "task": kind, "format": fmt, "checkpoint": spec.checkpoint,
               "parity": meta["parity"], "run_dir": str(run_dir)}
    if not (report["passed"] and shape_report["passed"]):
        partial.unlink(missing_ok=True)
        return {**results, "status": "failed"}, None
    partial.replace(run_dir / spec.file_name)
    return results, meta


def failure_message(fmt: str, parity: dict, run_dir: Path) -> str:
    """Why the exported model was not kept: the parity numbers and the first disagreeing images."""
    firsts = "; ".join(", ".join(f"{k} {v}" for k, v in item.items()) for item in parity["first_failures"])
    text = f"format={fmt}: the exported model disagrees with the PyTorch model on {parity['on']}: {describe(parity)}"
    if firsts:
        text += f". First disagreeing: {firsts}"
    other = parity["other_shape"]
    if not other["passed"]:
        text += (f". On input of another shape {tuple(other['shape'])}: max |dlogit| "
                 f"{other['max_abs_logit_diff']:.3g}")
    return text + f". Nothing was kept (numbers in {run_dir / 'results.json'})."
