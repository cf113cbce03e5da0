"""`model.meta.json`: everything needed to prepare an input exactly as predict does, where the
model came from, and how it was checked."""

from __future__ import annotations

import hashlib
import platform
from datetime import datetime, timezone
from importlib import metadata as package_metadata
from pathlib import Path

from transferkit.data.inputs import InputSpec
from transferkit.tasks.calibration import META_FIELD
from transferkit.inference.exported import OPENVINO_CONFIG

META_VERSION = 1
VERSIONED = ("transferkit", "torch", "timm", "albumentations", "opencv-python-headless", "opencv-python",
             "onnx", "onnxscript", "onnxruntime", "openvino", "nncf")
EXPORTERS = {"onnx": "torch.onnx.export(dynamo=True)", "torchscript": "torch.jit.trace",
             "openvino": "torch.onnx.export(dynamo=True) -> openvino.convert_model -> save_model(compress_to_fp16=False)"}
OPENVINO_RUNTIME = {"device": "CPU", **OPENVINO_CONFIG}  # what predict compiles the model with


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with Path(path).open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def versions() -> dict[str, str]:
    found = {"python": platform.python_version()}
    for name in VERSIONED:
        try:
            found[name] = package_metadata.version(name)
        except package_metadata.PackageNotFoundError:
            continue
    return found


def input_record(spec: InputSpec, kind: str, uint8_input: bool, axes: dict[int, str]) -> dict:
    """The input contract: the InputSpec fields (read back by predict) plus how to apply them."""
    size = spec.image_size
    layout = "NHWC" if uint8_input else "NCHW"
    shape = ["batch", size, size, spec.in_chans] if uint8_input else ["batch", spec.in_chans, size, size]
    for axis, name in axes.items():
        shape[axis] = name
    normalise = ("(x - mean(x)) / max(std(x), 1 / sqrt(C*H*W)) over each whole image (float32, population std)"
                 if spec.normalization == "per_image" else "(pixel / 255 - mean) / std per channel (float32)")
    return {
        **spec.to_dict(),
        "name": "images", "dtype": "uint8" if uint8_input else "float32", "layout": layout, "shape": shape,
        "colour": "grey (L)" if spec.in_chans == 1 else "RGB",
        "decode": "Pillow, first frame, EXIF orientation applied; transparency composited on `background`; "
                  "16-bit scaled to 8-bit; converted to RGB or L (transferkit.data.decode.load_image)",
        "resize": f"stretch to {size} x {size} (aspect ratio not kept, no crop) with OpenCV "
                  f"{spec.interpolation} (albumentations Resize)" + ("; segmentation may take any H x W" if kind == "segmentation" else ""),
        "normalize": normalise + (" -- inside the graph: feed resized uint8 pixels" if uint8_input else ""),
    }


def output_record(kind: str, num_classes: int) -> dict:
    if kind == "segmentation":
        return {"name": "logits", "shape": ["batch", num_classes, "height", "width"],
                "postprocess": "resize the logits bilinearly (align_corners=false) to the image's own size, "
                               "then argmax over classes"}
    if kind == "multilabel":
        return {"name": "logits", "shape": ["batch", num_classes],
                "postprocess": "sigmoid per class; class c is predicted when its probability >= thresholds[c] "
                               "(tuned on validation; null: 0.5)"}
    return {"name": "logits", "shape": ["batch", num_classes],
            "postprocess": "divide by `temperature` (calibration; null: leave as is), then softmax over classes"}


def build_meta(task, kind: str, spec: InputSpec, ckpt: Path, fmt: str, file_name: str, opset: int | None,
               uint8_input: bool, axes: dict[int, str], quantize: str | None = None) -> dict:
    """The metadata; `export.quantize` ("int8" or None) and, for OpenVINO, `export.runtime` are optional keys
    (absent in older files: FP32)."""
    model = dict(task.hparams.get("model") or {})
    return {
        "meta_version": META_VERSION,
        "task": kind,
        "class_names": list(task.class_names),
        "num_classes": len(task.class_names),
        "input": input_record(spec, kind, uint8_input, axes),
        "output": output_record(kind, len(task.class_names)),
        META_FIELD: getattr(task, "temperature", None),  # the checkpoint's calibration temperature (null: none)
        **({"thresholds": getattr(task, "thresholds", None)} if kind == "multilabel" else {}),  # null: 0.5
        "export": {"format": fmt, "file": file_name, "opset": opset, "include_preprocessing": uint8_input,
                   "dynamic_axes": sorted(set(axes.values()), key=["batch", "height", "width"].index),
                   "exporter": EXPORTERS[fmt], "eval_mode": True, "quantize": quantize,
                   **({"runtime": OPENVINO_RUNTIME} if fmt == "openvino" else {})},
        "source": {"checkpoint": str(Path(ckpt).resolve()), "sha256": sha256(ckpt),
                   "backbone": model.get("backbone"), "head": model.get("head") if kind == "segmentation" else None},
        "versions": versions(),
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
