"""`python -m transferkit export ckpt_path=... [format=onnx|torchscript] [input=...]`: write the model
as `model.onnx` or `model.torchscript.pt` plus `model.meta.json`, kept only if it passes parity."""

from __future__ import annotations

import logging
import time
from pathlib import Path

from omegaconf import DictConfig

from transferkit.errors import ConfigError, lookup
from transferkit.exporting.formats import dynamic_axes, export_onnx, export_torchscript, require_onnx_packages
from transferkit.exporting.graph import build_graph, example_input, other_shape_input, task_kind
from transferkit.exporting.metadata import build_meta
from transferkit.exporting.parity import check_parity, describe
from transferkit.exporting.samples import input_items, parity_batches, test_split_items
from transferkit.inference.exported import ExportedModel
from transferkit.inference.spec import MODEL_FILES, InputSpec, meta_path
from transferkit.tasks.loading import load_task, require
from transferkit.planning.rebuild import checkpoint_run_config
from transferkit.training.rundir import create_run_dir, write_config, write_json

log = logging.getLogger("transferkit")
CKPT_HINT = "a checkpoint written by fit, e.g. outputs/<date>/<time>/checkpoints/best.ckpt"


class ParityError(RuntimeError):
    """The exported model does not compute what the PyTorch model computes; it was not kept."""


def parity_items(cfg: DictConfig, ckpt: Path, task, in_chans: int):
    if cfg.input is not None:
        return input_items(require(cfg.input, "input", "an image file or a folder of images"), in_chans)
    if not checkpoint_run_config(ckpt).is_file():
        raise ConfigError(f"ckpt_path={str(ckpt)!r} has no run config.yaml two folders up, so its test split is "
                          "unknown; pass input=<image file or folder> to check parity on.")
    return test_split_items(cfg, task, in_chans)


def write_model(fmt: str, graph, example, path: Path, axes: dict[int, str], opset: int) -> int | None:
    if fmt == "onnx":
        return export_onnx(graph, example, path, axes, opset)
    export_torchscript(graph, example, path)
    return None


def run(cfg: DictConfig) -> dict:
    start = time.time()
    ckpt = require(cfg.ckpt_path, "ckpt_path", CKPT_HINT)
    fmt = str(cfg.format)
    file_name = lookup(MODEL_FILES, fmt, "format")
    options = cfg.export
    if fmt == "onnx":
        require_onnx_packages()  # before anything is loaded or written
    task = load_task(ckpt)
    kind, spec = task_kind(task), InputSpec.from_data_config(task.hparams.data_config)
    uint8_input = bool(options.include_preprocessing)
    where, count, items = parity_items(cfg, ckpt, task, spec.in_chans)
    run_dir = create_run_dir(cfg.run_dir)
    write_config(cfg, run_dir)
    log.info("Run directory: %s", run_dir)
    graph, axes = build_graph(task, spec, uint8_input), dynamic_axes(kind, uint8_input)
    partial = run_dir / f"partial-{file_name}"  # moved into place only once parity passed
    log.info("Exporting %s (%s, %s input) to %s ...", kind, fmt, "uint8 NHWC" if uint8_input else "float32 NCHW",
             file_name)
    opset = write_model(fmt, graph, example_input(spec, uint8_input, kind), partial, axes, int(options.opset))
    meta = build_meta(task, kind, spec, ckpt, fmt, file_name, opset, uint8_input, axes)
    exported = ExportedModel(partial, meta)
    log.info("Checking parity on %s (%d images) ...", where, count)
    batches = parity_batches(items, spec, uint8_input, int(cfg.data.batch_size), options.get("parity_max_images"))
    report = check_parity(kind, graph.network, exported, batches)
    other = other_shape_input(spec, uint8_input, kind)
    shape_report = check_parity(kind, graph, exported, [([f"random {tuple(other.shape)}"] * len(other), other, other)])
    meta["parity"] = {"on": where, **report,
                      "other_shape": {"shape": list(other.shape), "passed": shape_report["passed"],
                                      "max_abs_logit_diff": shape_report["max_abs_logit_diff"]}}
    log.info("Parity: %s; another shape %s: %s", describe(report), tuple(other.shape),
             "passed" if shape_report["passed"] else "FAILED")
    results = {"command": "export", "status": "completed", "task": kind, "format": fmt, "checkpoint": str(ckpt),
               "parity": meta["parity"], "run_dir": str(run_dir)}
    if not (report["passed"] and shape_report["passed"]):
        partial.unlink(missing_ok=True)
        results.update(status="failed", wall_seconds=round(time.time() - start, 2))
        write_json(results, run_dir / "results.json")
        raise ParityError(failure_message(fmt, where, report, shape_report, other.shape, run_dir))
    partial.replace(run_dir / file_name)
    write_json(meta, meta_path(run_dir / file_name))
    results.update(model=str(run_dir / file_name), meta=str(meta_path(run_dir / file_name)),
                   wall_seconds=round(time.time() - start, 2))
    write_json(results, run_dir / "results.json")
    log.info("Wrote %s and %s", run_dir / file_name, meta_path(run_dir / file_name).name)
    return results


def failure_message(fmt: str, where: str, report: dict, shape_report: dict, shape, run_dir: Path) -> str:
    firsts = "; ".join(", ".join(f"{k} {v}" for k, v in item.items()) for item in report["first_failures"])
    text = f"format={fmt}: the exported model disagrees with the PyTorch model on {where}: {describe(report)}"
    if firsts:
        text += f". First disagreeing: {firsts}"
    if not shape_report["passed"]:
        text += (f". On input of another shape {tuple(shape)}: max |dlogit| "
                 f"{shape_report['max_abs_logit_diff']:.3g}")
    return text + f". Nothing was kept (numbers in {run_dir / 'results.json'})."
