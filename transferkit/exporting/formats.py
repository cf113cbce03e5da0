"""Write an `InferenceGraph` as ONNX (torch.onnx.export through torch.export), TorchScript
(torch.jit.trace) or OpenVINO IR (the ONNX file through openvino.convert_model), with a dynamic batch
axis (and dynamic height and width for segmentation)."""

from __future__ import annotations

import logging
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch

from transferkit.errors import EXPORT_EXTRA_HINT, ConfigError
from transferkit.runtime.torch_files import first_line

log = logging.getLogger("transferkit")

INPUT_NAME, OUTPUT_NAME = "images", "logits"
ONNX_PACKAGES = ("onnx", "onnxscript", "onnxruntime")
EXPORTER_LOGGERS = ("onnxscript", "onnx_ir", "torch.onnx", "torch.export", "torch._dynamo")


class ExportError(ConfigError):
    """The exporter could not turn the model into the requested format."""


def require_export_package(name: str, what: str) -> None:
    """`name` importable, or a one-line error naming what needs it and how to install it."""
    try:
        __import__(name)
    except ImportError:
        raise ExportError(f"{what} needs {name}, which is not installed; install the export extra: "
                          f"{EXPORT_EXTRA_HINT}") from None


def require_onnx_packages() -> None:
    missing = []
    for name in ONNX_PACKAGES:
        try:
            __import__(name)
        except ImportError:
            missing.append(name)
    if missing:
        raise ExportError(f"format=onnx needs {', '.join(missing)}, which is not installed; install the export "
                          f"extra: {EXPORT_EXTRA_HINT}")


@contextmanager
def quiet_exporter() -> Iterator[None]:
    """The exporter's optimiser passes log every rewrite at INFO; keep their warnings only."""
    loggers = [logging.getLogger(name) for name in EXPORTER_LOGGERS]
    levels = [logger.level for logger in loggers]
    quiet = not log.isEnabledFor(logging.DEBUG)
    try:
        for logger in loggers if quiet else []:
            logger.setLevel(logging.WARNING)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        for logger, level in zip(loggers, levels):
            logger.setLevel(level)


def dynamic_axes(kind: str, uint8_input: bool) -> dict[int, str]:
    """Input axes that may vary: batch, and for segmentation the image's height and width."""
    if kind != "segmentation":
        return {0: "batch"}
    return {0: "batch", 1: "height", 2: "width"} if uint8_input else {0: "batch", 2: "height", 3: "width"}


def export_onnx(graph: torch.nn.Module, example: torch.Tensor, path: Path, axes: dict[int, str],
                opset: int) -> int:
    """Write `path` with torch.onnx.export(dynamo=True); returns the opset the file declares."""
    require_onnx_packages()
    from torch.export import Dim

    shapes = ({axis: Dim.DYNAMIC for axis in axes},)
    try:
        with quiet_exporter():
            program = torch.onnx.export(graph, (example,), dynamo=True, input_names=[INPUT_NAME],
                                        output_names=[OUTPUT_NAME], dynamic_shapes=shapes,
                                        opset_version=opset, verbose=False)
            program.save(str(path), external_data=False)
    except Exception as error:  # noqa: BLE001 - torch.export/onnxscript raise many types
        raise ExportError(f"format=onnx: torch.onnx.export failed ({first_line(error)}); add debug=true for "
                          "the traceback, or try format=torchscript.") from error
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    return max(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))


def export_torchscript(graph: torch.nn.Module, example: torch.Tensor, path: Path) -> None:
    """Write `path` with torch.jit.trace. torch.jit is deprecated in recent torch; it stays for
    C++/libtorch users, so its deprecation and tracer warnings are expected and silenced here."""
    log.info("TorchScript: torch.jit is deprecated in recent torch; kept for C++/libtorch users "
             "(prefer format=onnx elsewhere).")
    try:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore", FutureWarning)
            warnings.simplefilter("ignore", torch.jit.TracerWarning)
            traced = torch.jit.trace(graph, (example,), check_trace=False)
            torch.jit.save(traced, str(path))
    except Exception as error:  # noqa: BLE001 - the tracer raises RuntimeError/TypeError variants
        raise ExportError(f"format=torchscript: torch.jit.trace failed ({first_line(error)}); add debug=true "
                          "for the traceback, or try format=onnx.") from error


def convert_openvino(onnx_path: Path):
    """The ONNX file as an in-memory OpenVINO model (dynamic axes kept)."""
    require_export_package("openvino", "format=openvino")
    import openvino as ov  # lazy: optional extra

    try:
        return ov.convert_model(str(onnx_path))
    except Exception as error:  # noqa: BLE001 - the converter raises many types
        raise ExportError(f"format=openvino: openvino.convert_model failed ({first_line(error)}); add debug=true "
                          "for the traceback, or try format=onnx.") from error


def save_openvino(model, xml_path: Path) -> None:
    """Write `model.xml` + `model.bin` with FP32 weights (save_model would compress them to FP16)."""
    import openvino as ov  # lazy: optional extra

    ov.save_model(model, str(xml_path), compress_to_fp16=False)
