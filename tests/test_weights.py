"""model.weights: local files round-trip, foreign heads and channels adapt, hub fails fast offline."""

from __future__ import annotations

import time

import pytest
import torch
from safetensors.torch import save_file

from transferkit.models.backbones import create_backbone
from transferkit.models.weights import (
    WeightsUnavailableError,
    check_hub_reachable,
    classify_weights,
    init_backbone_weights,
    load_backbone_weights,
)


@pytest.mark.parametrize("suffix", [".safetensors", ".pth"])
def test_round_trip_gives_identical_outputs(tmp_path, suffix):
    torch.manual_seed(0)
    source = create_backbone("test_resnet").eval()
    path = tmp_path / f"w{suffix}"
    if suffix == ".safetensors":
        save_file({k: v.contiguous() for k, v in source.state_dict().items()}, str(path))
    else:
        torch.save(source.state_dict(), path)
    torch.manual_seed(1)
    target = create_backbone("test_resnet").eval()
    x = torch.randn(2, 3, 32, 32)
    assert not torch.allclose(source(x), target(x))
    report = load_backbone_weights(target, path)
    assert report.loaded == len(source.state_dict()) and not report.missing
    assert torch.allclose(source(x), target(x))


def test_full_model_with_other_head_and_prefix_loads(tmp_path):
    import timm

    full = timm.create_model("test_resnet", num_classes=7)
    torch.save({"state_dict": {f"model.{k}": v for k, v in full.state_dict().items()}}, tmp_path / "c.ckpt")
    target = create_backbone("test_resnet")
    report = load_backbone_weights(target, tmp_path / "c.ckpt")
    assert any(k.startswith("fc.") for k in report.unexpected)
    assert torch.equal(target.conv1[0].weight, full.conv1[0].weight)


def test_in_chans_mismatch_is_adapted(tmp_path):
    rgb = create_backbone("test_resnet", in_chans=3)
    save_file({k: v.contiguous() for k, v in rgb.state_dict().items()}, str(tmp_path / "rgb.safetensors"))
    grey = create_backbone("test_resnet", in_chans=1)
    report = load_backbone_weights(grey, tmp_path / "rgb.safetensors")
    assert report.adapted_in_chans
    expected = rgb.conv1[0].weight.sum(dim=1, keepdim=True)
    assert torch.allclose(grey.conv1[0].weight, expected)


def test_wrong_architecture_is_reported(tmp_path):
    other = create_backbone("test_convnext")
    save_file({k: v.contiguous() for k, v in other.state_dict().items()}, str(tmp_path / "o.safetensors"))
    with pytest.raises(WeightsUnavailableError, match="no tensor that fits"):
        load_backbone_weights(create_backbone("test_resnet"), tmp_path / "o.safetensors")


def test_missing_file_names_the_key(tmp_path):
    with pytest.raises(ValueError, match="model.weights=.*no such file"):
        classify_weights(str(tmp_path / "nope.safetensors"))


def test_hub_offline_fails_fast_in_one_clear_line(monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    start = time.monotonic()
    with pytest.raises(WeightsUnavailableError) as info:
        check_hub_reachable("resnet18", host="unreachable.invalid", timeout_s=3)
    assert time.monotonic() - start < 10
    message = str(info.value)
    assert "model.weights=hub" in message and "offline" in message and "model.weights=/path" in message
    assert "\n" not in message


def test_hub_path_goes_through_the_check(monkeypatch):
    calls = []
    monkeypatch.setattr("transferkit.models.weights.check_hub_reachable",
                        lambda name: calls.append(name) or (_ for _ in ()).throw(WeightsUnavailableError("offline")))
    with pytest.raises(WeightsUnavailableError):
        init_backbone_weights(create_backbone("test_resnet"), "hub", backbone_name="test_resnet", in_chans=3)
    assert calls == ["test_resnet"]
