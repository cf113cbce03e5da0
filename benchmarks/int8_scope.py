"""Why INT8 exports disagreed with the checkpoint, and what fixes it (issue 25): quality only.

The house model (charnet: resnet10t, grey 32 px) is fitted by `fit recipe=small_similar` on the real `symbols`
folder (`benchmarks/photo_sets.py`, read-only; 300 train / 600 test images, fonts split) and exported as FP32
ONNX by `python -m transferkit export`. Its FP32 ONNX file is then quantized many ways, every one calibrated on
all 300 training images (MinMax ranges do not depend on how they are batched; batches of 10 here, because
onnxruntime's histogram calibrators need equal batches), and run on the 600 test images beside the FP32 file:

* top-1 agreement with the checkpoint (% of test images), accuracy (%), mean |logit - FP32 logit|;
* onnxruntime `quantize_static`: calibration method (MinMax, Percentile 99.999 / 99.99, Entropy), reduce_range,
  symmetric or int8 activations, QOperator vs QDQ, per-tensor weights, head or stem kept float, and the shipped
  scope (`transferkit.exporting.int8`: the residual-branch convolutions only);
* per-layer sensitivity: one Conv/Gemm quantized alone, everything else float;
* NNCF (OpenVINO backend, run by the OpenVINO runtime at f32): its defaults, MinMax activation ranges, bias
  correction off, and the shipped scope.

    python benchmarks/int8_scope.py [--workdir DIR]

Writes benchmarks/results/int8_scope.json and .md. Speed is in `inference_speed.py --formats`.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import logging
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

import numpy as np  # noqa: E402

log = logging.getLogger("int8_scope")
RESULTS = HERE / "results"


def house_fp32(work: Path) -> tuple[Path, Path]:
    import photo_sets  # noqa: E402 - beside this file

    from transferkit.cli import app as cli

    root = photo_sets.build_set("symbols", work / "sets")
    common = ["trainer.accelerator=cpu", "trainer.devices=1", "trainer.enable_progress_bar=false",
              "trainer.enable_model_summary=false", "data.num_workers=0"]
    fit = cli.run(["fit", "recipe=small_similar", f"data.root={root}", "model.weights=charnet", *common,
                   f"run_dir={work / 'fit'}"])
    out = cli.run(["export", f"ckpt_path={fit['best_checkpoint']}", "format=onnx", f"run_dir={work / 'onnx'}"])
    return root, Path(out["model"])


def prepared(root: Path, split: str, meta: dict) -> tuple[np.ndarray, np.ndarray]:
    from transferkit.data.decode import load_image
    from transferkit.data.inputs import InputSpec

    spec = InputSpec.from_dict(meta["input"])
    classes = sorted(p.name for p in (root / split).iterdir() if p.is_dir())
    paths = sorted((root / split).rglob("*.png"))
    transform = spec.eval_transform()
    images = np.stack([transform(image=load_image(p, in_chans=spec.in_chans))["image"].numpy() for p in paths])
    return images, np.array([classes.index(p.parent.name) for p in paths])


def ort_runner(path: Path):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    return lambda batch: session.run(None, {"images": batch})[0]


def logits(model, images: np.ndarray) -> np.ndarray:
    return np.concatenate([model(np.ascontiguousarray(images[i:i + 64])) for i in range(0, len(images), 64)])


def row(reference: np.ndarray, got: np.ndarray, labels: np.ndarray) -> dict:
    return {"agreement": round(100 * float((got.argmax(1) == reference.argmax(1)).mean()), 2),
            "accuracy": round(100 * float((got.argmax(1) == labels).mean()), 2),
            "mean_abs_logit_diff": round(float(np.abs(got - reference).mean()), 4)}


def ort_settings(convs: list[str], kept: dict) -> dict[str, dict]:
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType

    percentile, entropy = CalibrationMethod.Percentile, CalibrationMethod.Entropy
    head, stem = convs[-1:], kept["stem"]
    return {
        "all ops, MinMax (the previous default)": {},
        "Percentile 99.999": {"calibrate_method": percentile},
        "Percentile 99.99": {"calibrate_method": percentile, "extra_options": {"CalibPercentile": 99.99}},
        "Entropy": {"calibrate_method": entropy},
        "reduce_range (7-bit weights)": {"reduce_range": True},
        "symmetric activations": {"extra_options": {"ActivationSymmetric": True}},
        "int8 activations (S8S8)": {"activation_type": QuantType.QInt8},
        "QOperator": {"quant_format": QuantFormat.QOperator},
        "per-tensor weights": {"per_channel": False},
        "head (Gemm) float": {"nodes_to_exclude": head},
        "head and stem float": {"nodes_to_exclude": head + stem},
        "Conv only, stem float": {"op_types_to_quantize": ["Conv"], "nodes_to_exclude": stem},
        "shipped: branch Conv+Relu only (stem, shortcuts, adds, pools, head float)": {
            "op_types_to_quantize": ["Conv", "Relu"], "nodes_to_exclude": stem + kept["shortcut"]},
        **{f"only {name} quantized": {"nodes_to_quantize": [name]} for name in convs},
    }


def measure_ort(fp32: Path, train: np.ndarray, test: np.ndarray, labels: np.ndarray, reference, work: Path) -> dict:
    import onnx
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    from transferkit.exporting.int8 import CalibrationReader, choose_float_convs

    pre = work / "pre.onnx"
    quant_pre_process(str(fp32), str(pre))
    graph = onnx.load(str(pre))
    convs = [n.name for n in graph.graph.node if n.op_type in ("Conv", "Gemm", "MatMul")]
    kept = choose_float_convs(graph)
    rows = {}
    for name, options in ort_settings(convs, kept).items():
        settings = {"quant_format": QuantFormat.QDQ, "per_channel": True, "activation_type": QuantType.QUInt8,
                    "weight_type": QuantType.QInt8, "calibrate_method": CalibrationMethod.MinMax, **options}
        out = work / "q.onnx"
        with contextlib.redirect_stdout(io.StringIO()):
            quantize_static(str(pre), str(out), CalibrationReader([train[i:i + 10] for i in range(0, len(train), 10)]),
                            **settings)
        rows[name] = row(reference, logits(ort_runner(out), test), labels)
        log.info("onnxruntime %-60s %s", name, rows[name])
    return {"float_convs": kept, "rows": rows}


def measure_nncf(fp32: Path, train: np.ndarray, test: np.ndarray, labels: np.ndarray, reference) -> dict:
    import nncf
    import openvino as ov
    from nncf.quantization.advanced_parameters import AdvancedQuantizationParameters as Advanced
    from nncf.quantization.range_estimator import RangeEstimatorParametersSet

    from transferkit.exporting.int8 import float_convs, quantize_openvino

    minmax = RangeEstimatorParametersSet.MINMAX
    settings = {"NNCF defaults (the previous export)": {},
                "bias correction off": {"advanced_parameters": Advanced(disable_bias_correction=True)},
                "MinMax activation ranges": {"advanced_parameters": Advanced(activations_range_estimator_params=minmax)},
                "MinMax ranges, bias correction off": {"advanced_parameters": Advanced(
                    activations_range_estimator_params=minmax, disable_bias_correction=True)},
                "preset mixed (asymmetric activations), MinMax, bias correction off": {
                    "preset": nncf.QuantizationPreset.MIXED, "advanced_parameters": Advanced(
                        activations_range_estimator_params=minmax, disable_bias_correction=True)}}
    core, images, rows = ov.Core(), [image[None] for image in train], {}

    def run(model) -> np.ndarray:
        request = core.compile_model(model, "CPU", {"INFERENCE_PRECISION_HINT": "f32"}).create_infer_request()
        return logits(lambda batch: np.array(request.infer([batch])[0], copy=True), test)

    for name, options in settings.items():
        with contextlib.redirect_stdout(io.StringIO()):
            model = nncf.quantize(ov.convert_model(str(fp32)), nncf.Dataset(images), subset_size=len(images),
                                  target_device=nncf.TargetDevice.CPU, **options)
        rows[name] = row(reference, run(model), labels)
        log.info("nncf %-60s %s", name, rows[name])
    batches = [train[i:i + 10] for i in range(0, len(train), 10)]
    for scope, kept in (("shipped, scope all", None), ("shipped: branch convolutions only", float_convs(fp32))):
        with contextlib.redirect_stdout(io.StringIO()):
            model, _ = quantize_openvino(ov.convert_model(str(fp32)), batches, kept)
        rows[scope] = row(reference, run(model), labels)
        log.info("nncf %-60s %s", scope, rows[scope])
    return {"rows": rows}


def markdown(result: dict) -> str:
    lines = ["| quantizer | setting | agreement with checkpoint % | test accuracy % | mean abs logit change |",
             "|---|---|---|---|---|"]
    ref = result["checkpoint_accuracy"]
    for tool in ("onnxruntime", "nncf"):
        for name, r in result[tool]["rows"].items():
            lines.append(f"| {tool} | {name} | {r['agreement']:.2f} | {r['accuracy']:.2f} | {r['mean_abs_logit_diff']:.3f} |")
    m = result["machine"]
    lines += ["", f"House model (charnet, grey 32 px) on the real `symbols` folder: 600 test images, checkpoint accuracy "
              f"{ref:.2f} %; calibrated on its 300 training images. {m['platform']}, onnxruntime {m['onnxruntime']}, "
              f"openvino {m['openvino']}, nncf {m['nncf']}, {m['date']}."]
    return "\n".join(lines) + "\n"


def main() -> None:
    from transferkit.cli import app as cli

    cli.configure_logging(debug=False)
    logging.getLogger("int8_scope").setLevel(logging.INFO)
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", type=Path)
    parser.add_argument("--output", type=Path, default=RESULTS / "int8_scope.json")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="int8_scope_") as tmp:
        work = args.workdir or Path(tmp)
        root, fp32 = house_fp32(work)
        meta = json.loads(fp32.with_name("model.meta.json").read_text())
        train, _ = prepared(root, "train", meta)
        test, labels = prepared(root, "test", meta)
        reference = logits(ort_runner(fp32), test)  # the FP32 file: parity with the checkpoint within 1e-4
        result = {"test_images": len(test), "calibration_images": len(train),
                  "checkpoint_accuracy": round(100 * float((reference.argmax(1) == labels).mean()), 2),
                  "onnxruntime": measure_ort(fp32, train, test, labels, reference, work),
                  "nncf": measure_nncf(fp32, train, test, labels, reference)}
    import nncf
    import onnxruntime
    import openvino

    result["machine"] = {"platform": platform.platform(), "cpus": os.cpu_count(), "load_average": list(os.getloadavg()),
                         "onnxruntime": onnxruntime.__version__, "openvino": openvino.__version__,
                         "nncf": nncf.__version__, "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}
    args.output.write_text(json.dumps(result, indent=1))
    args.output.with_suffix(".md").write_text(markdown(result))
    log.info("\n%s", markdown(result))


if __name__ == "__main__":
    main()
