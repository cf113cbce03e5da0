"""Static INT8 quantization of an exported FP32 model, calibrated on prepared training images:
ONNX Runtime's `quantize_static` (QDQ, per-channel int8 weights, uint8 activations, MinMax ranges) for
`format=onnx`, NNCF's post-training quantization (MinMax ranges, no bias correction) for `format=openvino`.

What is quantized (`export.int8_scope`, measured in benchmarks/results/int8_scope.md):
* `branches`: the convolutions of the residual branches (with their ReLUs). The stem convolutions, the
  shortcut (skip-path) convolutions, the residual additions, pooling and the classifier head stay float32:
  quantizing them took the house model's top-1 agreement with its checkpoint from >= 99 % to 96.7 % (the
  head's weights have outliers that one int8 scale per class row must span; an error on the skip path or
  in the stem reaches every later layer unattenuated).
* `all`: everything the quantizer supports: the fastest (3.1x ONNX FP32 on resnet50 at batch 64 under
  ONNX Runtime, against 1.5x for `branches`, whose float islands each cost ONNX Runtime two layout
  transposes; OpenVINO's CPU plugin loses less to them), but it flips near-ties (96.7 % agreement).
* `auto` (planning): `branches` for both formats (benchmarks/results/inference_formats.md)."""

from __future__ import annotations

import logging
import time
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from transferkit.exporting.formats import ExportError, INPUT_NAME, quiet_exporter, require_export_package
from transferkit.runtime.torch_files import first_line

log = logging.getLogger("transferkit")

NNCF_LOGGERS = ("nncf",)
SCOPES = ("branches", "all")
QUANTIZED_OPS = ("Conv", "Relu")  # scope="branches": a Relu after a quantized Conv is folded into it
POOLS = ("MaxPool", "AveragePool", "GlobalAveragePool")
OPENVINO_CONVS = ("Convolution", "GroupConvolution")
OPENVINO_UNTOUCHED = ("Parameter", "Constant", "Result")


class CalibrationReader:
    """onnxruntime's CalibrationDataReader protocol (`get_next` -> one input feed, None at the end)."""

    def __init__(self, batches: list[np.ndarray]) -> None:
        self._batches: Iterator[np.ndarray] = iter(batches)

    def get_next(self) -> dict | None:
        batch = next(self._batches, None)
        return None if batch is None else {INPUT_NAME: batch}


def choose_float_convs(model) -> dict[str, list[str]]:
    """The convolutions an INT8 export keeps in float32 (an ONNX ModelProto, nodes in topological order):
    the stem (every Conv before the first pooling or Add node; at least the first Conv) and the shortcuts
    (a Conv whose output feeds an Add and whose input, directly or before pooling, is also read by
    another node)."""
    nodes = list(model.graph.node)
    producer = {out: node for node in nodes for out in node.output}
    readers: dict[str, list] = defaultdict(list)
    for node in nodes:
        for name in node.input:
            readers[name].append(node)
    convs = [node for node in nodes if node.op_type == "Conv"]
    stem = []
    for node in nodes:
        if node.op_type in POOLS or node.op_type == "Add":
            break
        if node.op_type == "Conv":
            stem.append(node.name)

    def fans_out(tensor: str) -> bool:  # read by another node too, directly or before pooling
        while len(readers[tensor]) < 2:
            node = producer.get(tensor)
            if node is None or node.op_type not in POOLS:
                return False
            tensor = node.input[0]
        return True

    shortcut = [node.name for node in convs if node.name not in stem
                and any(r.op_type == "Add" for r in readers[node.output[0]]) and fans_out(node.input[0])]
    return {"stem": stem or [c.name for c in convs[:1]], "shortcut": shortcut}


def float_convs(onnx_path: Path) -> dict[str, list[str]]:
    """`choose_float_convs` of an ONNX file."""
    import onnx  # lazy: optional extra

    return choose_float_convs(onnx.load(str(onnx_path), load_external_data=False))


def quantize_onnx(fp32: Path, out: Path, batches: list[np.ndarray], scope: str = "branches") -> dict:
    """Write `out`: `fp32` after ORT's pre-processing (shape inference, graph optimisation) quantized
    statically; returns how (for model.meta.json)."""
    require_export_package("onnxruntime", "export.quantize=int8 with format=onnx")
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static  # lazy: optional extra
    from onnxruntime.quantization.shape_inference import quant_pre_process  # lazy: optional extra

    prepared = out.with_name(out.name + ".pre.onnx")
    try:
        with quiet_exporter():
            quant_pre_process(str(fp32), str(prepared))
            kept = float_convs(prepared) if scope == "branches" else {}
            limits = ({"op_types_to_quantize": list(QUANTIZED_OPS), "nodes_to_exclude": kept["stem"] + kept["shortcut"]}
                      if kept else {})
            quantize_static(str(prepared), str(out), CalibrationReader(batches), quant_format=QuantFormat.QDQ,
                            per_channel=True, activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                            calibrate_method=CalibrationMethod.MinMax, **limits)
    # (no CalibMaxIntermediateOutputs: onnxruntime 1.32 drops, not merges, the ranges collected before each flush;
    # MinMax collects per-tensor ReduceMin/ReduceMax outputs only, so keeping every batch costs little memory)
    except Exception as error:  # noqa: BLE001 - the quantizer raises many types
        raise ExportError(f"export.quantize=int8: onnxruntime's quantize_static failed ({first_line(error)}); add "
                          "debug=true for the traceback, or export without export.quantize.") from error
    finally:
        prepared.unlink(missing_ok=True)
    return {"tool": "onnxruntime.quantization.quantize_static", "quant_format": "QDQ", "per_channel": True,
            "weights": "int8", "activations": "uint8", "calibrate_method": "MinMax", **scope_record(scope, kept)}


def scope_record(scope: str, kept: dict) -> dict:
    """model.meta.json's account of what stayed float32."""
    if scope == "all":
        return {"scope": "all"}
    return {"scope": "branches: the residual-branch convolutions; stem, shortcut convolutions, additions, pooling "
                     "and head stay float32", "float_convs": kept}


def ignored_openvino_scope(model, kept: dict):
    """NNCF's IgnoredScope for `scope="branches"`: every operation type but convolution, and the kept convs
    (an ONNX node `n` is `n/WithoutBiases` or `n` in the converted OpenVINO model)."""
    import nncf  # lazy: optional extra (and slow to import)

    names = set(kept["stem"] + kept["shortcut"])
    ops = list(model.get_ops())
    convs = [op.get_friendly_name() for op in ops if op.get_type_name() in OPENVINO_CONVS
             and op.get_friendly_name().split("/")[0] in names]
    types = sorted({op.get_type_name() for op in ops} - set(OPENVINO_CONVS) - set(OPENVINO_UNTOUCHED))
    return nncf.IgnoredScope(names=convs, types=types, validate=False)


def quantize_openvino(model, batches: list[np.ndarray], kept: dict | None = None):
    """NNCF post-training quantization of an OpenVINO model (CPU target, one image per calibration step);
    `kept`: the convs `choose_float_convs` keeps in float32 (None: quantize everything NNCF would).
    Activation ranges are the min/max over all images (NNCF's default averages each image's extremes,
    which clips) and bias correction is off: measured, both took agreement from 97 % to 86 %."""
    require_export_package("nncf", "export.quantize=int8 with format=openvino")
    import nncf  # lazy: optional extra (and slow to import)
    from nncf.quantization.advanced_parameters import AdvancedQuantizationParameters  # lazy: optional extra
    from nncf.quantization.range_estimator import RangeEstimatorParametersSet  # lazy: optional extra

    images = [image[None] for batch in batches for image in batch]
    loggers = [logging.getLogger(name) for name in NNCF_LOGGERS]
    levels = [logger.level for logger in loggers]
    advanced = AdvancedQuantizationParameters(activations_range_estimator_params=RangeEstimatorParametersSet.MINMAX,
                                              disable_bias_correction=True)
    scope = "all" if kept is None else "branches"
    try:
        for logger in loggers:
            logger.setLevel(logging.WARNING)
        with quiet_exporter():
            ignored = None if kept is None else ignored_openvino_scope(model, kept)
            quantized = nncf.quantize(model, nncf.Dataset(images), subset_size=len(images),
                                      target_device=nncf.TargetDevice.CPU, ignored_scope=ignored,
                                      advanced_parameters=advanced)
    except Exception as error:  # noqa: BLE001 - NNCF raises many types
        raise ExportError(f"export.quantize=int8: nncf.quantize failed ({first_line(error)}); add debug=true for "
                          "the traceback, or use format=onnx export.quantize=int8.") from error
    finally:
        for logger, level in zip(loggers, levels):
            logger.setLevel(level)
    return quantized, {"tool": "nncf.quantize", "target_device": "CPU", "preset": "performance (symmetric)",
                       "activation_ranges": "min/max over all images", "bias_correction": False,
                       "subset_size": len(images), **scope_record(scope, kept or {})}


def onnx_speed(fp32: Path, int8: Path, batches: list[np.ndarray], repeats: int = 3) -> dict:
    """How fast ONNX Runtime runs the INT8 model against the FP32 one on this machine: the best of `repeats`
    passes over (at most 4 of) the calibration batches each, after a warm-up; model.meta.json's `speed`.
    ONNX Runtime's int8 kernels run channels-last, so float islands (`branches`) can make INT8 slower than
    FP32 (benchmarks/results/inference_formats.md): export says so when it measures it."""
    import onnxruntime  # lazy: optional extra

    batches = batches[:4]
    if not batches:
        return {}
    sessions = {name: onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
                for name, path in (("fp32", fp32), ("int8", int8))}
    best = {}
    for name, session in sessions.items():
        session.run(None, {INPUT_NAME: batches[0]})
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            for batch in batches:
                session.run(None, {INPUT_NAME: batch})
            times.append(time.perf_counter() - start)
        best[name] = min(times)
    images = sum(len(batch) for batch in batches)
    return {"runtime": "onnxruntime", "images": images, "batch": len(batches[0]),
            "fp32_images_per_s": round(images / best["fp32"], 1), "int8_images_per_s": round(images / best["int8"], 1),
            "int8_over_fp32": round(best["fp32"] / best["int8"], 2)}
