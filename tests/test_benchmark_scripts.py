"""The GPU benchmark scripts run end to end in their CPU smoke modes, so a GPU session can rely on them.

Not in the default run (about a minute): `python -m pytest -q -m benchmark`; `.ci/run` runs them.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.benchmark

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def run_script(name: str, *args: str, cwd: Path) -> None:
    env = {**os.environ, "NO_ALBUMENTATIONS_UPDATE": "1"}
    done = subprocess.run([sys.executable, str(BENCHMARKS / name), "--smoke", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]


@pytest.mark.slow
def test_gpu_fit_and_gpu_profile_smoke(tmp_path):
    run_script("gpu_fit.py", "--cases", "eager", "frozen", "guard", "--output", str(tmp_path / "fit.json"),
               cwd=tmp_path)
    report = json.loads((tmp_path / "fit.json").read_text())
    assert [c["case"] for c in report["cases"]] == ["resnet10t", "resnet10t_frozen_feature_cache",
                                                    "resnet10t_no_loss_guard"]
    assert all("error" not in c for c in report["cases"])
    assert report["fit_ratio"] > 0 and report["no_loss_guard_ratio"] > 0 and report["frozen_cache_ratio"] > 0
    frozen = report["cases"][1]["fit"]["feature_cache"]
    assert frozen["used"] and frozen["loaders"]["train"]["served_from"] == "host"  # CPU: no device copy

    run_script("gpu_profile.py", "--only", "fit", "--output", str(tmp_path / "profile.json"), cwd=tmp_path)
    profile = json.loads((tmp_path / "profile.json").read_text())
    assert profile["fit"]["wall_ms_per_step"] > 0 and profile["fit"]["top_host"]


@pytest.mark.slow
def test_gpu_data_smoke(tmp_path):
    run_script("gpu_data.py", "--variants", "synthetic", "decode_gpu", "--output", str(tmp_path / "data.json"),
               cwd=tmp_path)
    report = json.loads((tmp_path / "data.json").read_text())
    assert set(report["variants"]) == {"synthetic", "decode_gpu"}
    decode = report["variants"]["decode_gpu"]
    assert decode["status"] == "completed" and decode["ratio_to_model_bound"] > 0 and report["folder_ratio"]


@pytest.mark.slow
def test_audit_benchmark_smoke(tmp_path):
    run_script("audit.py", "--output", str(tmp_path / "audit.json"), cwd=tmp_path)
    (row,) = json.loads((tmp_path / "audit.json").read_text())["quality"]
    assert row["images"] > 1800 and 0 <= row["leak_recall"] <= 1 and row["flipped"] == 90 and row["ood"] == 30


def test_serve_load_benchmark_smoke(tmp_path):
    run_script("serve_load.py", "--out", str(tmp_path / "serve_load"), cwd=tmp_path)
    results = json.loads((tmp_path / "serve_load.json").read_text())
    assert results["failed"] == 0 and len(results["ratios_on_over_off"]) == 1
    assert (tmp_path / "serve_load.md").is_file()
