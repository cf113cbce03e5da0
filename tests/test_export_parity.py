"""Parity rules and the export extra's one-line errors (no model is exported here)."""

from __future__ import annotations

import numpy as np
import pytest

from transferkit.exporting.parity import ParityTally, describe


def test_close_logits_pass_and_near_ties_are_counted_apart() -> None:
    ref = np.array([[2.0, 1.0, 0.0], [0.5, 0.50005, -1.0]])
    tally = ParityTally("classification")
    tally.add(["a.png", "tie.png"], ref, ref + np.array([[5e-5, 0, 0], [1e-4, 0, 0]]))
    report = tally.report()
    # the near tie flipped its argmax (0.5001 > 0.50005): reported, not a failure
    assert report["passed"] and report["near_ties"] == 1 and report["near_tie_flips"] == 1
    assert report["argmax_disagreements"] == 0 and report["max_abs_logit_diff"] == pytest.approx(1e-4)
    assert "1 near ties" in describe(report)


def test_tolerance_is_absolute_plus_relative() -> None:
    ref = np.array([[100.0, 0.0]])
    ok, bad = ParityTally("classification"), ParityTally("classification")
    ok.add(["big.png"], ref, ref + np.array([[0.09, 0.0]]))       # <= 1e-4 + 1e-3 * 100
    bad.add(["small.png"], ref, ref + np.array([[0.0, 2e-4]]))   # > 1e-4 + 1e-3 * 0
    assert ok.report()["passed"]
    report = bad.report()
    assert not report["passed"] and report["first_failures"][0]["image"] == "small.png"


def test_flipped_argmax_fails_and_names_the_image() -> None:
    ref = np.array([[1.0, 0.0], [0.0, 1.0]])
    tally = ParityTally("classification")
    tally.add(["ok.png", "flip.png"], ref, np.array([[1.0, 0.0], [1.0, 0.0]]))
    report = tally.report()
    assert not report["passed"] and report["argmax_disagreements"] == 1
    assert [f["image"] for f in report["first_failures"]] == ["flip.png"]


def test_segmentation_needs_pixel_agreement() -> None:
    rng = np.random.default_rng(0)
    ref = rng.normal(size=(1, 3, 100, 100)).astype(np.float32)
    good = ParityTally("segmentation")
    good.add(["scene.png"], ref, ref + 1e-6)
    assert good.report()["passed"] and good.report()["pixel_agreement"] == 1.0
    swapped = ref.copy()
    for j in range(2):  # 2 of 10,000 pixels change class: 99.98 %
        swapped[0, ref[0, :, 0, j].argmax(), 0, j] = -100.0
    bad = ParityTally("segmentation")
    bad.add(["scene.png"], ref, swapped)
    report = bad.report()
    assert not report["passed"] and report["pixel_agreement"] < 0.9999
    assert "pixel agreement 99.98" in describe(report)


def test_nothing_compared_is_not_a_pass() -> None:
    assert not ParityTally("classification").report()["passed"]


def test_missing_onnxruntime_says_how_to_install(monkeypatch) -> None:
    import sys

    from transferkit.errors import ConfigError
    from transferkit.exporting.formats import require_onnx_packages
    from transferkit.inference.exported import require_onnxruntime

    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # `import onnxruntime` raises ImportError
    with pytest.raises(ConfigError, match=r'onnxruntime is not installed.*pip install "\.\[export\]"'):
        require_onnxruntime()
    with pytest.raises(ConfigError, match=r'format=onnx needs onnxruntime.*pip install "\.\[export\]"'):
        require_onnx_packages()
