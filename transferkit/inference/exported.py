"""An exported model's files (`model.onnx`, `model.int8.onnx`, `model.torchscript.pt`, `model.xml` or
`model.int8.xml` (+ `.bin`), and `model.meta.json` beside it: what export writes and predict recognises),
loaded and run through ONNX Runtime, torch.jit or the OpenVINO runtime (CPU, f32 precision hint). Imports
neither Lightning nor timm."""

from __future__ import annotations

import json
import logging
import warnings
from pathlib import Path

import numpy as np
import torch

from transferkit.data.inputs import InputSpec
from transferkit.errors import EXPORT_EXTRA_HINT, ConfigError
from transferkit.runtime.torch_files import first_line
from transferkit.tasks.calibration import META_FIELD

log = logging.getLogger("transferkit")

ONNX_SUFFIX = ".onnx"
TORCHSCRIPT_SUFFIX = ".torchscript.pt"
OPENVINO_SUFFIX = ".xml"
INT8_TAG = ".int8"
META_SUFFIX = ".meta.json"
MODEL_FILES = {"onnx": "model" + ONNX_SUFFIX, "torchscript": "model" + TORCHSCRIPT_SUFFIX,
               "openvino": "model" + OPENVINO_SUFFIX}
QUANTIZED_FILES = {"onnx": "model" + INT8_TAG + ONNX_SUFFIX, "openvino": "model" + INT8_TAG + OPENVINO_SUFFIX}
MODEL_SUFFIXES = (INT8_TAG + ONNX_SUFFIX, INT8_TAG + OPENVINO_SUFFIX, TORCHSCRIPT_SUFFIX, ONNX_SUFFIX, OPENVINO_SUFFIX)
MODEL_NAMES = "model.onnx, model.int8.onnx, model.torchscript.pt, model.xml or model.int8.xml"
# The CPU plugin computes in bf16 where the CPU has it unless told f32: the precision parity was checked at.
OPENVINO_CONFIG = {"INFERENCE_PRECISION_HINT": "f32"}
EXPORT_HINT = "export it again with `python -m transferkit export ckpt_path=<run>/checkpoints/best.ckpt`"
META_KEYS = ("task", "class_names", "input", "export")


class ExportedModelError(ConfigError):
    """An exported model or its metadata cannot be used (missing, corrupt, incomplete)."""


def require_onnxruntime():
    """The onnxruntime module, or a one-line error saying how to install it."""
    try:
        import onnxruntime
    except ImportError:
        raise ExportedModelError(f"onnxruntime is not installed; ONNX models need the export extra: "
                                 f"{EXPORT_EXTRA_HINT}") from None
    return onnxruntime


def require_openvino():
    """The openvino module, or a one-line error saying how to install it."""
    try:
        import openvino
    except ImportError:
        raise ExportedModelError(f"openvino is not installed; OpenVINO models need the export extra: "
                                 f"{EXPORT_EXTRA_HINT}") from None
    return openvino


def is_exported_model(path: Path | str) -> bool:
    return Path(path).name.endswith(MODEL_SUFFIXES)


def model_format(path: Path | str) -> str:
    name = Path(path).name
    if name.endswith(TORCHSCRIPT_SUFFIX):
        return "torchscript"
    return "openvino" if name.endswith(OPENVINO_SUFFIX) else "onnx"


def model_file(fmt: str, quantize: str | None) -> str:
    """The file export writes: `model.onnx`, ..., or `model.int8.onnx` / `model.int8.xml` when quantized."""
    return QUANTIZED_FILES[fmt] if quantize else MODEL_FILES[fmt]


def meta_path(model_path: Path | str) -> Path:
    """`model.onnx` / `model.int8.onnx` / `model.torchscript.pt` / `model.xml` -> `model.meta.json` beside it."""
    path = Path(model_path)
    for suffix in MODEL_SUFFIXES:
        if path.name.endswith(suffix):
            return path.with_name(path.name[: -len(suffix)] + META_SUFFIX)
    return path.with_name(path.name + META_SUFFIX)


def read_meta(model_path: Path, key: str = "ckpt_path") -> dict:
    """The metadata written beside an exported model, checked for what predict needs."""
    path = meta_path(model_path)
    if not path.is_file():
        raise ExportedModelError(f"{key}={str(model_path)!r} has no metadata file {str(path)!r} beside it "
                                 f"(class names and preprocessing live there); copy it along, or {EXPORT_HINT}.")
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ExportedModelError(f"{str(path)!r} is not readable JSON ({first_line(error)}); {EXPORT_HINT}.") from None
    missing = [k for k in META_KEYS if not isinstance(meta, dict) or k not in meta]
    if missing:
        raise ExportedModelError(f"{str(path)!r} lacks {missing}; it is not a transferkit model.meta.json; {EXPORT_HINT}.")
    return meta


def meta_temperature(meta: dict, path: Path | str) -> float | None:
    """The calibration temperature `model.meta.json` records (`temperature`; absent or null: none)."""
    value = meta.get(META_FIELD)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        raise ExportedModelError(f"{str(meta_path(path))!r} has temperature={value!r}; it must be a number > 0 "
                                 f"(or null: uncalibrated); {EXPORT_HINT}.")
    return float(value)


class ExportedModel:
    """`model(batch) -> logits` (float32 numpy) for a batch prepared as `meta['input']` says:
    float32 N x C x H x W normalised, or uint8 N x H x W x C when preprocessing is in the graph."""

    def __init__(self, path: Path | str, meta: dict, key: str = "ckpt_path") -> None:
        self.path, self.meta, self.key = Path(path), meta, key
        self.format = meta["export"]["format"]
        self.task, self.class_names = meta["task"], list(meta["class_names"])
        self.spec = InputSpec.from_dict(meta["input"])
        self.uint8_input = bool(meta["export"].get("include_preprocessing"))
        self.temperature = meta_temperature(meta, path)  # calibration (None: not calibrated)
        self.thresholds = meta.get("thresholds")  # multilabel's tuned per-class thresholds (None: 0.5)
        if not self.path.is_file():
            raise ExportedModelError(f"{key}={str(self.path)!r} does not exist (an exported model: {MODEL_NAMES}).")
        if self.path.stat().st_size == 0:
            raise ExportedModelError(f"{key}={str(self.path)!r} is empty (0 bytes); {EXPORT_HINT}.")
        loaders = {"onnx": self._load_onnx, "torchscript": self._load_torchscript, "openvino": self._load_openvino}
        self._run = loaders[self.format]()

    def _load_onnx(self):
        ort = require_onnxruntime()
        options = ort.SessionOptions()
        options.log_severity_level = 3  # errors only: ORT's warnings would flood the console
        try:
            session = ort.InferenceSession(str(self.path), options, providers=["CPUExecutionProvider"])
        except Exception as error:  # noqa: BLE001 - ORT raises its own pybind types
            raise ExportedModelError(f"{self.key}={str(self.path)!r} is not a readable ONNX model "
                                     f"({first_line(error)}); {EXPORT_HINT}.") from None
        name = session.get_inputs()[0].name
        return lambda batch: session.run(None, {name: batch})[0]

    def _load_openvino(self):
        ov = require_openvino()
        weights = self.path.with_suffix(".bin")
        if not weights.is_file():
            raise ExportedModelError(f"{self.key}={str(self.path)!r} has no weights file {weights.name!r} beside it; "
                                     f"copy it along, or {EXPORT_HINT}.")
        try:
            compiled = ov.Core().compile_model(str(self.path), "CPU", OPENVINO_CONFIG)
        except Exception as error:  # noqa: BLE001 - OpenVINO raises RuntimeError and its own types
            raise ExportedModelError(f"{self.key}={str(self.path)!r} is not a readable OpenVINO model "
                                     f"({first_line(error)}); {EXPORT_HINT}.") from None
        request = compiled.create_infer_request()
        return lambda batch: np.array(request.infer([batch])[0], copy=True)

    def _load_torchscript(self):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", FutureWarning)  # torch.jit's deprecation notice
                module = torch.jit.load(str(self.path), map_location="cpu").eval()
        except Exception as error:  # noqa: BLE001 - torch.jit raises RuntimeError/ValueError variants
            raise ExportedModelError(f"{self.key}={str(self.path)!r} is not a readable TorchScript model "
                                     f"({first_line(error)}); {EXPORT_HINT}.") from None

        def run(batch: np.ndarray) -> np.ndarray:
            with torch.inference_mode():
                return module(torch.from_numpy(batch)).numpy()

        return run

    def __call__(self, batch: np.ndarray | torch.Tensor) -> np.ndarray:
        array = batch.numpy() if isinstance(batch, torch.Tensor) else batch
        dtype = np.uint8 if self.uint8_input else np.float32
        return self._run(np.ascontiguousarray(array, dtype=dtype))

    def transform(self):
        """How an image becomes this model's input (resize only when the graph normalises)."""
        return self.spec.resize_transform() if self.uint8_input else self.spec.eval_transform()


def load_exported(path: Path | str, key: str = "ckpt_path") -> ExportedModel:
    """An exported model with the metadata beside it; one-line errors name the file."""
    path = Path(path).expanduser()
    if not path.exists():
        raise ExportedModelError(f"{key}={str(path)!r} does not exist (an exported model: {MODEL_NAMES}, "
                                 "with model.meta.json beside it).")
    meta = read_meta(path, key)
    if meta["export"].get("format") != model_format(path):
        raise ExportedModelError(f"{key}={str(path)!r} is named as {model_format(path)} but its metadata says "
                                 f"format {meta['export'].get('format')!r}; {EXPORT_HINT}.")
    return ExportedModel(path, meta, key)
