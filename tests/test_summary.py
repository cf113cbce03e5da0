"""`summary`: the course's conv arithmetic, checked against real forward passes; `show-features`."""

from __future__ import annotations

import csv
import json
import subprocess
import sys

import numpy as np
import pytest
import timm
import torch
from PIL import Image
from torch.utils.flop_counter import FlopCounterMode

from transferkit.cli import app as cli
from transferkit.evaluation.layer_records import trace_layers
from transferkit.evaluation.arithmetic import output_size


@pytest.mark.parametrize(("size", "kernel", "stride", "padding", "dilation", "ceil", "expected"), [
    (224, 7, 2, 3, 1, False, 112), (112, 3, 2, 1, 1, False, 56), (32, 5, 1, 0, 1, False, 28),
    (7, 3, 2, 0, 1, True, 3), (8, 3, 2, 0, 1, True, 4), (32, 3, 1, 2, 2, False, 32)])
def test_output_size_is_the_course_formula(size, kernel, stride, padding, dilation, ceil, expected):
    assert output_size(size, kernel, stride, padding, dilation, ceil) == expected


@pytest.mark.parametrize(("name", "size"), [("resnet18", 64), ("convnext_tiny", 64), ("vit_small_patch16_224", 32)])
def test_shapes_params_and_flops_match_a_real_forward_pass(name, size):
    kwargs = {"img_size": size} if name.startswith("vit") else {}
    model = timm.create_model(name, num_classes=0, **kwargs).eval()
    x = torch.randn(1, 3, size, size)
    records, totals = trace_layers(model, x)
    windows = [w for r in records for w in r.windows]
    assert windows and all(w.ok for w in windows)  # N' = (N - K + 2P)/S + 1 == the tensor's size
    with torch.no_grad():
        assert totals["output_shape"] == tuple(model(x).shape)
        for stage, real in zip([r for r in records if r.name == "stages.3.blocks.2.mlp.fc2"],
                               [model.forward_features(x)]):
            assert stage.output_shape[-1] == real.shape[1] or stage.output_shape[1] == real.shape[1]
    assert sum(r.params for r in records) == sum(p.numel() for p in model.parameters())
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(x)
    assert sum(r.flops for r in records) == counter.get_total_flops() == totals["flops"]
    for record in records:  # the course's formulas agree with what ran
        if record.formula_params is not None:
            assert record.formula_params == record.params, record.name
        if record.formula_flops is not None:
            assert record.formula_flops == record.flops, record.name


def test_receptive_field_and_depth_follow_the_graph():
    model = timm.create_model("resnet18", num_classes=0).eval()
    records, totals = trace_layers(model, torch.randn(1, 3, 64, 64))
    by_name = {r.name: r for r in records}
    assert by_name["conv1"].trace.rf == 7 and by_name["maxpool"].trace.rf == 11
    assert by_name["layer1.0.conv1"].trace.rf == 19  # 11 + (3 - 1) * 4
    assert by_name["layer2.0.downsample.0"].trace.depth < by_name["layer2.0.conv2"].trace.depth
    assert totals["depth"] == 17 and totals["rf"] == float("inf")  # 17 convs + the fc = ResNet-18


def test_resnet50_counts_as_the_literature(tmp_path):
    result = cli.run(["summary", "model=resnet50", f"run_dir={tmp_path / 'r50'}"])
    assert round(result["backbone_params"] / 1e6, 1) == 23.5
    assert round(result["params"] / 1e6, 1) == 25.6
    assert round(result["macs"] / 1e9, 1) == 4.1 and round(result["flops"] / 1e9, 1) == 8.2
    assert result["depth"] == 50


def test_summary_writes_tables_with_the_trainable_column(tmp_path):
    run = tmp_path / "sum"
    result = cli.run(["summary", "model=resnet18", "data.image_size=64", "finetune=partial",
                      "finetune.trainable_stages=2", f"run_dir={run}"])
    rows = list(csv.DictReader((run / "summary.csv").open()))
    trains = {r["row"]: r["trainable"] for r in rows}
    assert trains["layer1"] == "no" and trains["layer3"] == "yes" and trains["layer4"] == "yes"
    assert rows[-1]["row"] == "total" and int(rows[-1]["params"]) == result["params"]
    assert sum(int(r["params"]) for r in rows[:-1]) == result["params"]
    assert [r["output_shape"] for r in rows if r["row"] == "layer4"] == ["512x2x2"]
    assert "| row |" in (run / "summary.md").read_text()
    assert json.loads((run / "results.json").read_text())["backbone"] == "resnet18"
    layers = cli.run(["summary", "model=resnet18", "data.image_size=64", "summary.layers=true",
                      f"run_dir={tmp_path / 'layers'}"])
    checks = [r["size_check"] for r in layers["rows"] if r["layers"].startswith("conv")]
    assert "(64-7+2*3)/2+1=32" in checks and layers["params"] == result["params"]


def test_compare_gives_the_course_architectures(tmp_path):
    result = cli.run(["summary", "model=resnet18", "data.image_size=32", "summary.compare=true",
                      f"run_dir={tmp_path / 'cmp'}"])
    table = {r["model"]: r for r in result["compare"]}
    assert table["LeNet-5"]["params"] == 61706 and table["LeNet-5"]["depth"] == 5
    assert table["AlexNet"]["depth"] == 8 and table["VGG-16"]["depth"] == 16
    assert table["GoogLeNet"]["depth"] == 22 and table["ResNet-50"]["depth"] == 50
    assert round(table["VGG-16"]["params"] / 1e6, 1) == 138.4
    assert (tmp_path / "cmp" / "compare.csv").is_file()


def test_lenet5_is_registered_only_when_used():
    code = "import transferkit, timm; assert not timm.is_model('lenet5'); " \
           "import transferkit.models.lenet; assert timm.is_model('lenet5')"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_summary_bad_size_names_the_key(tmp_path):
    with pytest.raises(Exception, match="data.image_size"):
        cli.run(["summary", "model=resnet18", "data.image_size=8", "model.backbone=lenet5",
                 f"run_dir={tmp_path / 'bad'}"])


def test_show_features_draws_filters_and_stage_maps(tmp_path):
    image = tmp_path / "digit.png"
    Image.fromarray((np.arange(32 * 32) % 255).reshape(32, 32).astype(np.uint8)).save(image)
    result = cli.run(["show-features", "model.weights=charnet", f"input={image}", f"run_dir={tmp_path / 'sf'}"])
    assert (tmp_path / "sf" / "features.png").stat().st_size > 10_000
    assert result["first_conv"][1] == 1 and len(result["stages"]) == 5
    assert result["stages"][-1]["shape"] == [512, 1, 1]
    with pytest.raises(FileNotFoundError, match="input="):
        cli.run(["show-features", "model.weights=charnet", f"input={tmp_path / 'missing.png'}"])


@pytest.mark.slow
def test_show_features_from_a_checkpoint(tmp_path, fast, image_folder):
    cli.run(["fit", "recipe=small_similar", f"data.root={image_folder}", *fast])
    image = next((image_folder / "cat").iterdir())
    result = cli.run(["show-features", f"ckpt_path={tmp_path / 'run' / 'checkpoints' / 'best.ckpt'}",
                      f"input={image}", f"run_dir={tmp_path / 'sf'}"])
    assert (tmp_path / "sf" / "features.png").is_file() and result["stages"]
