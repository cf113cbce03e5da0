"""Static INT8 quantization of an exported FP32 model, calibrated on prepared training images:
ONNX Runtime's `quantize_static` (QDQ, per-channel int8 weights, uint8 activations, MinMax ranges) for
`format=onnx`, NNCF's post-training quantization for `format=openvino`."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from transferkit.exporting.formats import ExportError, INPUT_NAME, quiet_exporter, require_export_package
from transferkit.runtime.torch_files import first_line

log = logging.getLogger("transferkit")

NNCF_LOGGERS = ("nncf",)


class CalibrationReader:
    """onnxruntime's CalibrationDataReader protocol (`get_next` -> one input feed, None at the end)."""

    def __init__(self, batches: list[np.ndarray]) -> None:
        self._batches: Iterator[np.ndarray] = iter(batches)

    def get_next(self) -> dict | None:
        batch = next(self._batches, None)
        return None if batch is None else {INPUT_NAME: batch}


def quantize_onnx(fp32: Path, out: Path, batches: list[np.ndarray]) -> dict:
    """Write `out`: `fp32` after ORT's pre-processing (shape inference, graph optimisation) quantized
    statically; returns how (for model.meta.json)."""
    require_export_package("onnxruntime", "export.quantize=int8 with format=onnx")
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static  # lazy: optional extra
    from onnxruntime.quantization.shape_inference import quant_pre_process  # lazy: optional extra

    prepared = out.with_name(out.name + ".pre.onnx")
    try:
        with quiet_exporter():
            quant_pre_process(str(fp32), str(prepared))
            quantize_static(str(prepared), str(out), CalibrationReader(batches), quant_format=QuantFormat.QDQ,
                            per_channel=True, activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                            calibrate_method=CalibrationMethod.MinMax)
    # (no CalibMaxIntermediateOutputs: onnxruntime 1.32 drops, not merges, the ranges collected before each flush;
    # MinMax collects per-tensor ReduceMin/ReduceMax outputs only, so keeping every batch costs little memory)
    except Exception as error:  # noqa: BLE001 - the quantizer raises many types
        raise ExportError(f"export.quantize=int8: onnxruntime's quantize_static failed ({first_line(error)}); add "
                          "debug=true for the traceback, or export without export.quantize.") from error
    finally:
        prepared.unlink(missing_ok=True)
    return {"tool": "onnxruntime.quantization.quantize_static", "quant_format": "QDQ", "per_channel": True,
            "weights": "int8", "activations": "uint8", "calibrate_method": "MinMax"}


def quantize_openvino(model, batches: list[np.ndarray]):
    """NNCF post-training quantization of an OpenVINO model (CPU target, one image per calibration step)."""
    require_export_package("nncf", "export.quantize=int8 with format=openvino")
    import nncf  # lazy: optional extra (and slow to import)

    images = [image[None] for batch in batches for image in batch]
    loggers = [logging.getLogger(name) for name in NNCF_LOGGERS]
    levels = [logger.level for logger in loggers]
    try:
        for logger in loggers:
            logger.setLevel(logging.WARNING)
        with quiet_exporter():
            quantized = nncf.quantize(model, nncf.Dataset(images), subset_size=len(images),
                                      target_device=nncf.TargetDevice.CPU)
    except Exception as error:  # noqa: BLE001 - NNCF raises many types
        raise ExportError(f"export.quantize=int8: nncf.quantize failed ({first_line(error)}); add debug=true for "
                          "the traceback, or use format=onnx export.quantize=int8.") from error
    finally:
        for logger, level in zip(loggers, levels):
            logger.setLevel(level)
    return quantized, {"tool": "nncf.quantize", "target_device": "CPU", "preset": "performance (symmetric)",
                       "subset_size": len(images)}
