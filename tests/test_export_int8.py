"""`export format=openvino` (FP32 parity) and `export.quantize=int8` (ONNX Runtime, NNCF): checked by
accuracy on the test split, refused past `export.max_drop`, and read back by predict and transferkit.load."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import write_class_folder
from transferkit.cli import app as cli
from transferkit.errors import ConfigError

TINY = ["model.backbone=test_resnet", "data.image_size=32", "data.batch_size=4", "data.num_workers=0",
        "trainer.max_epochs=3", "trainer.accelerator=cpu", "trainer.devices=1",
        "trainer.enable_progress_bar=false", "trainer.enable_model_summary=false"]
TEST_IMAGES = 3 * 6


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("int8")


@pytest.fixture(scope="module")
def folder(work) -> Path:
    return write_class_folder(work / "images", classes=("red", "green", "blue"), per_class=6,
                              splits=("train", "val", "test"))


@pytest.fixture(scope="module")
def ckpt(work, folder, test_resnet_weights) -> Path:
    results = cli.run(["fit", "recipe=small_similar", f"data.root={folder}", *TINY,
                       f"model.weights={test_resnet_weights}", f"run_dir={work / 'fit'}"])
    return Path(results["best_checkpoint"])


def export(ckpt: Path, run_dir: Path, *overrides: str) -> dict:
    return cli.run(["export", f"ckpt_path={ckpt}", f"run_dir={run_dir}", *overrides])


def labels(csv_path: Path) -> dict[str, str]:
    return {row["path"]: row["label"] for row in csv.DictReader(csv_path.open())}


def predict(model: Path, folder: Path, out: Path) -> dict[str, str]:
    cli.run(["predict", f"ckpt_path={model}", f"input={folder}", f"output={out}", "data.num_workers=0",
             f"run_dir={out.parent / (out.stem + '_run')}"])
    return labels(out)


@pytest.fixture(scope="module")
def from_ckpt(ckpt, folder, work) -> dict[str, str]:
    return predict(ckpt, folder / "test", work / "ckpt.csv")


def agreement(a: dict[str, str], b: dict[str, str]) -> float:
    assert sorted(a) == sorted(b) and len(a) == TEST_IMAGES
    return sum(a[k] == b[k] for k in a) / len(a)


@pytest.mark.slow
def test_onnx_int8_is_quantized_per_channel_checked_on_the_test_split_and_predicts(ckpt, folder, work, from_ckpt):
    import onnx
    from onnx import numpy_helper

    out = work / "onnx_int8"
    results = export(ckpt, out, "format=onnx", "export.quantize=int8")
    assert sorted(p.name for p in out.iterdir()) == ["config.yaml", "model.int8.onnx", "model.meta.json", "results.json"]
    meta = json.loads((out / "model.meta.json").read_text())
    accuracy = meta["accuracy"]
    assert accuracy["images"] == TEST_IMAGES and "test split" in accuracy["on"] and accuracy["passed"]
    assert -accuracy["accuracy_change_points"] <= 1.0 and accuracy["top1_agreement"] >= 0.99
    assert accuracy["other_shape"]["passed"] and results["accuracy"] == accuracy
    assert meta["export"]["quantize"] == "int8" and meta["export"]["file"] == "model.int8.onnx"
    assert meta["quantization"]["calibration"]["images"] == 3 * 6 and "train split" in meta["quantization"]["calibration"]["on"]
    auto = meta["quantization"]["auto"]  # export.int8_scope=auto (the default): chosen on the val split, not the test split
    assert "val split" in auto["chosen_on"] and auto["images"] == 3 * 6 and auto["min_agreement"] == 99.0
    assert auto["chosen"] == ("all" if auto["agreement"]["all"] >= 99.0 else "branches")
    assert results["quantization"]["auto"] == auto and results["quantization"]["scope"].startswith(auto["chosen"])
    speed = meta["quantization"]["speed"]  # measured at export: INT8 against FP32 under ONNX Runtime, this CPU
    assert speed["images"] == 3 * 6 and speed["fp32_images_per_s"] > 0 and speed["int8_images_per_s"] > 0
    assert speed["int8_over_fp32"] == pytest.approx(speed["int8_images_per_s"] / speed["fp32_images_per_s"], rel=0.05)
    model = onnx.load(str(out / "model.int8.onnx"))
    ops = {node.op_type for node in model.graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    scales = {init.name: numpy_helper.to_array(init) for init in model.graph.initializer}
    weight_scales = [scales[n.input[1]] for n in model.graph.node
                     if n.op_type == "DequantizeLinear" and scales.get(n.input[0]) is not None
                     and scales[n.input[0]].dtype == np.int8 and scales[n.input[0]].ndim == 4]
    assert weight_scales and min(s.size for s in weight_scales) > 1  # per output channel, not one per tensor
    assert agreement(from_ckpt, predict(out / "model.int8.onnx", folder / "test", work / "onnx_int8.csv")) >= 0.99


@pytest.mark.slow
def test_openvino_fp32_keeps_fp32_weights_passes_parity_and_predicts(ckpt, folder, work, from_ckpt):
    import openvino as ov

    out = work / "ov"
    export(ckpt, out, "format=openvino")
    assert sorted(p.name for p in out.iterdir()) == ["config.yaml", "model.bin", "model.meta.json", "model.xml",
                                                     "results.json"]
    meta = json.loads((out / "model.meta.json").read_text())
    assert meta["parity"]["passed"] and meta["parity"]["max_abs_logit_diff"] < 1e-4  # f32 precision, not bf16
    assert meta["export"]["runtime"]["INFERENCE_PRECISION_HINT"] == "f32" and meta["export"]["quantize"] is None
    constants = [op for op in ov.Core().read_model(str(out / "model.xml")).get_ops() if op.get_type_name() == "Constant"]
    assert constants and not [op for op in constants if op.get_output_element_type(0) == ov.Type.f16]
    assert agreement(from_ckpt, predict(out / "model.xml", folder / "test", work / "ov.csv")) == 1.0


@pytest.mark.slow
def test_openvino_int8_with_preprocessing_in_graph_loads_and_predicts(ckpt, folder, work, from_ckpt):
    import transferkit

    out = work / "ov_int8"
    export(ckpt, out, "format=openvino", "export.quantize=int8", "export.include_preprocessing=true",
           "export.calibration_images=10")
    assert {"model.int8.xml", "model.int8.bin", "model.meta.json"} <= {p.name for p in out.iterdir()}
    meta = json.loads((out / "model.meta.json").read_text())
    assert meta["accuracy"]["passed"] and meta["quantization"]["tool"] == "nncf.quantize"
    assert meta["quantization"]["calibration"]["images"] == 10 and meta["input"]["dtype"] == "uint8"
    assert agreement(from_ckpt, predict(out / "model.int8.xml", folder / "test", work / "ov8.csv")) >= 0.99
    run = transferkit.load(out / "model.int8.xml")
    rows = run.predict(sorted((folder / "test").rglob("*.png"))[:2])
    assert len(rows) == 2


@pytest.mark.slow
def test_int8_that_drops_accuracy_is_refused_with_the_numbers(ckpt, work, monkeypatch):
    from transferkit.commands import export as export_command
    from transferkit.inference.exported import ExportedModel

    class Shifted(ExportedModel):  # a quantization gone wrong: every prediction moves to the next class
        def __call__(self, batch):
            return np.roll(super().__call__(batch), 1, axis=1)

    monkeypatch.setattr(export_command, "ExportedModel", Shifted)
    out = work / "refused"
    with pytest.raises(export_command.ParityError,
                       match=r"export.quantize=int8 was refused.*top-1 agreement .*accuracy .* points; export.max_drop=1\)"):
        export(ckpt, out, "format=onnx", "export.quantize=int8")
    assert sorted(p.name for p in out.iterdir()) == ["config.yaml", "results.json"]
    results = json.loads((out / "results.json").read_text())
    assert results["status"] == "failed" and not results["accuracy"]["passed"]


@pytest.mark.slow
def test_int8_scope_auto_keeps_all_when_it_agrees_and_quantizes_the_branches_when_it_does_not(ckpt, work, monkeypatch):
    from transferkit.commands import export as export_command
    from transferkit.inference.exported import ExportedModel

    kept = export(ckpt, work / "auto_all", "format=onnx", "export.quantize=int8", "export.min_agreement=0")
    assert kept["quantization"]["auto"]["chosen"] == "all" and kept["quantization"]["scope"] == "all"
    loaded = []

    class FirstShifted(ExportedModel):  # the first model written (scope all) flips every prediction
        def __init__(self, path, meta):
            super().__init__(path, meta)
            self.shifted = not loaded
            loaded.append(meta["quantization"]["scope"])

        def __call__(self, batch):
            logits = super().__call__(batch)
            return np.roll(logits, 1, axis=1) if self.shifted else logits

    monkeypatch.setattr(export_command, "ExportedModel", FirstShifted)
    out = work / "auto_branches"
    results = export(ckpt, out, "format=onnx", "export.quantize=int8")
    auto = results["quantization"]["auto"]
    assert loaded[0] == "all" and loaded[1].startswith("branches") and len(loaded) == 2
    assert auto["chosen"] == "branches" and auto["agreement"]["all"] < 99.0 and results["accuracy"]["passed"]
    meta = json.loads((out / "model.meta.json").read_text())
    assert meta["quantization"]["scope"].startswith("branches") and meta["quantization"]["float_convs"]["stem"]
    assert sorted(p.name for p in out.iterdir()) == ["config.yaml", "model.int8.onnx", "model.meta.json", "results.json"]


@pytest.mark.slow
def test_an_int8_model_slower_than_fp32_is_named_in_the_log(ckpt, work, monkeypatch, caplog):
    from transferkit.exporting import run as export_run

    monkeypatch.setattr(export_run, "onnx_speed", lambda fp32, int8, batches: {
        "runtime": "onnxruntime", "images": 8, "batch": 8, "fp32_images_per_s": 100.0, "int8_images_per_s": 71.0,
        "int8_over_fp32": 0.71})
    results = export(ckpt, work / "slower", "format=onnx", "export.quantize=int8", "export.int8_scope=branches")
    assert results["status"] == "completed"
    assert "at 0.71x the FP32 model's images/s on this CPU (batch 8): slower, not faster" in caplog.text
    assert "format=openvino export.quantize=int8" in caplog.text


@pytest.mark.parametrize("overrides,match", [
    (["format=torchscript", "export.quantize=int8"], "needs format=onnx or format=openvino"),
    (["format=onnx", "export.quantize=int4"], r"export.quantize='int4' is unknown"),
    (["format=onnx", "export.quantize=int8", "input=somewhere"], "drop input="),
    (["format=onnx", "export.quantize=int8", "export.max_drop=-1"], "export.max_drop"),
    (["format=onnx", "export.quantize=int8", "export.min_agreement=101"], "export.min_agreement=101.0 must be between"),
])
def test_bad_quantize_settings_fail_before_anything_is_loaded(tmp_path, overrides, match):
    (tmp_path / "unread.ckpt").write_bytes(b"")  # the settings are checked before the checkpoint is read
    with pytest.raises(ConfigError, match=match):
        export(tmp_path / "unread.ckpt", tmp_path / "never", *overrides)
    assert not (tmp_path / "never").exists()


def test_new_file_names_map_to_their_format_and_metadata():
    from transferkit.inference.exported import is_exported_model, meta_path, model_file, model_format

    for fmt, quantize, name in [("onnx", "int8", "model.int8.onnx"), ("openvino", None, "model.xml"),
                                ("openvino", "int8", "model.int8.xml"), ("onnx", None, "model.onnx")]:
        assert model_file(fmt, quantize) == name and model_format(name) == fmt and is_exported_model(name)
        assert meta_path(Path("/r") / name) == Path("/r/model.meta.json")


def test_missing_openvino_says_how_to_install(monkeypatch):
    import sys

    from transferkit.exporting.formats import require_export_package
    from transferkit.inference.exported import require_openvino

    monkeypatch.setitem(sys.modules, "openvino", None)
    monkeypatch.setitem(sys.modules, "nncf", None)
    with pytest.raises(ConfigError, match=r'openvino is not installed.*pip install "\.\[export\]"'):
        require_openvino()
    with pytest.raises(ConfigError, match=r'format=openvino export.quantize=int8 needs nncf.*pip install "\.\[export\]"'):
        require_export_package("nncf", "format=openvino export.quantize=int8")


def test_accuracy_tally_counts_agreement_and_the_change_in_points():
    from transferkit.exporting.accuracy import AccuracyTally

    tally = AccuracyTally()
    ref = np.array([[2.0, 0.0], [0.0, 2.0], [2.0, 0.0], [0.0, 2.0]])
    got = np.array([[2.0, 0.0], [2.0, 0.0], [2.0, 0.0], [0.0, 2.0]])  # image b flipped to class 0 (wrong)
    tally.add(["a", "b", "c", "d"], ref, got, [0, 1, 0, 1])
    report = tally.report(max_drop=30.0)
    assert report["top1_agreement"] == 0.75 and report["checkpoint_accuracy"] == 100.0
    assert report["exported_accuracy"] == 75.0 and report["accuracy_change_points"] == -25.0 and report["passed"]
    assert not tally.report(max_drop=20.0)["passed"]
    assert report["first_disagreements"] == [{"image": "b", "label": 1, "argmax": [1, 0]}]
    assert not AccuracyTally().report(max_drop=100.0)["passed"]
