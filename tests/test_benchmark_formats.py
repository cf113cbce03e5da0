"""`benchmarks/inference_speed.py --formats` (the export-format table) runs end to end in its smoke mode.

Not in the default run: `python -m pytest -q -m benchmark tests/test_benchmark_formats.py` (about 6 minutes
on 2 busy cores: a house-model fit, four exports, two speed tables)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.benchmark, pytest.mark.slow]

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "inference_speed.py"
FORMATS = ["PyTorch (checkpoint)", "ONNX Runtime FP32", "ONNX Runtime INT8", "ONNX Runtime INT8 all",
           "OpenVINO FP32", "OpenVINO INT8", "OpenVINO INT8 all"]


def test_format_table_smoke(tmp_path):
    env = {**os.environ, "NO_ALBUMENTATIONS_UPDATE": "1"}
    done = subprocess.run([sys.executable, str(SCRIPT), "--formats", "--smoke", "--output", str(tmp_path / "f.json")],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=1200)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads((tmp_path / "f.json").read_text())
    house, big = report["house"], report["compute_bound"]
    assert list(house["median_images_per_s"]) == FORMATS and list(big["median_images_per_s"]) == FORMATS
    assert all(rate > 0 for per in big["median_images_per_s"].values() for rate in per.values())
    assert house["test_images"] == 600 and house["accuracy"]["ONNX Runtime FP32"]["agreement_with_checkpoint"] == 100
    assert house["export_checks"]["OpenVINO FP32"]["passed"] and "accuracy_change_points" in house["export_checks"]["ONNX Runtime INT8"]
    assert "| ONNX Runtime INT8 |" in (tmp_path / "f.md").read_text()
    assert {c["chosen"] for c in house["auto_scope"].values()} <= {"all", "branches"}
    assert sorted(house["auto_scope"]) == ["ONNX Runtime INT8", "OpenVINO INT8"] and "kept `" in (tmp_path / "f.md").read_text()
    assert all(len(per) == 1 for per in big["load_average_per_round"].values())  # smoke: one round, its load recorded
