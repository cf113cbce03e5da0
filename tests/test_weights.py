"""model.weights: local files, the Hugging Face cache, the hub and house backbones; nothing downloads."""

from __future__ import annotations

import json
import time

import pytest
import torch
from safetensors.torch import save_file

from transferkit.models.backbones import create_backbone
from transferkit.models.weight_loading import load_backbone_weights, load_weights
from transferkit.models.weights import (
    WeightsSource,
    WeightsUnavailableError,
    classify_weights,
    find_in_hf_cache,
    resolve_weights_source,
)
from transferkit.models.network import check_hub_reachable


def save(model: torch.nn.Module, path):
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    return path


def write_hf_cache(cache, repo: str = "timm/test_resnet.r160_in1k", seed: int = 0):
    """The layout huggingface_hub keeps: models--<org>--<name>/{refs/main, snapshots/<commit>/<file>}."""
    import timm

    torch.manual_seed(seed)
    model = timm.create_model("test_resnet")
    folder = cache / f"models--{repo.replace('/', '--')}"
    commit = "0123456789abcdef0123456789abcdef01234567"
    (folder / "refs").mkdir(parents=True)
    (folder / "refs" / "main").write_text(commit)
    (folder / "snapshots" / commit).mkdir(parents=True)
    save(model, folder / "snapshots" / commit / "model.safetensors")
    return model


def outputs(model, x):
    return model.eval()(x)


@pytest.mark.parametrize("suffix", [".safetensors", ".pth"])
def test_local_file_loads_through_timm_with_identical_outputs(tmp_path, suffix):
    torch.manual_seed(0)
    source = create_backbone("test_resnet").eval()
    path = tmp_path / f"w{suffix}"
    save(source, path) if suffix == ".safetensors" else torch.save(source.state_dict(), path)
    torch.manual_seed(1)
    target = create_backbone("test_resnet")
    x = torch.randn(2, 3, 32, 32)
    assert not torch.allclose(outputs(source, x), outputs(target, x))
    report = load_weights(target, resolve_weights_source(str(path), "test_resnet"), backbone_name="test_resnet",
                          in_chans=3)
    assert report.loader == "timm" and not report.missing
    assert torch.allclose(outputs(source, x), outputs(target, x))


def test_a_full_timm_model_file_drops_its_classifier(tmp_path):
    import timm

    full = timm.create_model("test_resnet", num_classes=7)
    path = tmp_path / "full.pth"
    torch.save(full.state_dict(), path)
    target = create_backbone("test_resnet")
    load_weights(target, resolve_weights_source(str(path), "test_resnet"), backbone_name="test_resnet", in_chans=3)
    assert torch.equal(target.conv1[0].weight, full.conv1[0].weight)


def test_wrapped_checkpoint_with_prefix_loads_tolerantly(tmp_path):
    import timm

    full = timm.create_model("test_resnet", num_classes=7)
    torch.save({"state_dict": {f"model.{k}": v for k, v in full.state_dict().items()}}, tmp_path / "c.ckpt")
    target = create_backbone("test_resnet")
    report = load_backbone_weights(target, tmp_path / "c.ckpt")
    assert any(k.startswith("fc.") for k in report.unexpected)
    assert torch.equal(target.conv1[0].weight, full.conv1[0].weight)


def test_in_chans_mismatch_is_adapted(tmp_path):
    rgb = create_backbone("test_resnet", in_chans=3)
    path = save(rgb, tmp_path / "rgb.safetensors")
    grey = create_backbone("test_resnet", in_chans=1)
    load_weights(grey, resolve_weights_source(str(path), "test_resnet"), backbone_name="test_resnet", in_chans=1)
    assert torch.allclose(grey.conv1[0].weight, rgb.conv1[0].weight.sum(dim=1, keepdim=True))


def test_grey_file_with_its_record_is_spread_over_rgb(tmp_path):
    grey = create_backbone("test_resnet", in_chans=1)
    path = save(grey, tmp_path / "backbone.safetensors")
    (tmp_path / "backbone.json").write_text(json.dumps({"backbone": "test_resnet", "in_chans": 1, "image_size": 32}))
    source = resolve_weights_source(str(path), "test_resnet")
    assert source.record["in_chans"] == 1
    rgb = create_backbone("test_resnet", in_chans=3)
    report = load_weights(rgb, source, backbone_name="test_resnet", in_chans=3)
    assert report.adapted_in_chans
    assert torch.allclose(rgb.conv1[0].weight, grey.conv1[0].weight.repeat(1, 3, 1, 1) / 3)


def test_wrong_architecture_is_reported(tmp_path):
    path = save(create_backbone("test_convnext"), tmp_path / "o.safetensors")
    with pytest.raises(WeightsUnavailableError, match="no tensor that fits"):
        load_weights(create_backbone("test_resnet"), resolve_weights_source(str(path), "test_resnet"),
                     backbone_name="test_resnet", in_chans=3)


def test_missing_file_and_unknown_name_name_the_key(tmp_path):
    with pytest.raises(ValueError, match="model.weights=.*no such file"):
        classify_weights(str(tmp_path / "nope.safetensors"))
    with pytest.raises(ValueError, match="model.weights='charnt'.*Did you mean 'charnet'"):
        classify_weights("charnt")


def test_cache_only_offline_loads_without_the_network(tmp_path, monkeypatch):
    cached = write_hf_cache(tmp_path / "hub")
    monkeypatch.setattr("transferkit.models.network.socket.create_connection",
                        lambda *a, **k: pytest.fail("the network was asked"))
    assert find_in_hf_cache("test_resnet", str(tmp_path / "hub")).name == "model.safetensors"
    source = resolve_weights_source("hub", "test_resnet", cache_dir=str(tmp_path / "hub"))
    assert source.kind == "hf-cache" and source.record["hub_id"] == "timm/test_resnet.r160_in1k"
    target = create_backbone("test_resnet")
    load_weights(target, source, backbone_name="test_resnet", in_chans=3)
    x = torch.randn(2, 3, 32, 32)
    cached.reset_classifier(0)
    assert torch.allclose(outputs(cached, x), outputs(target, x))


def test_cache_miss_offline_fails_in_one_line_naming_the_options(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    (tmp_path / "empty").mkdir()
    with pytest.raises(WeightsUnavailableError) as info:
        resolve_weights_source("auto", "test_resnet", cache_dir=str(tmp_path / "empty"))
    message = str(info.value)
    assert "\n" not in message and "model.weights=charnet" in message and "model.weights=/path" in message
    assert str(tmp_path / "empty") in message and "timm/test_resnet.r160_in1k" in message
    # Planning a command that loads no weights (show-augs) does not need them.
    assert resolve_weights_source("auto", "test_resnet", cache_dir=str(tmp_path / "empty"),
                                  require_available=False).kind == "hub"


def test_hub_offline_fails_fast_in_one_clear_line(monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    start = time.monotonic()
    with pytest.raises(WeightsUnavailableError) as info:
        check_hub_reachable("resnet18", host="unreachable.invalid", timeout_s=3)
    assert time.monotonic() - start < 10
    assert "cannot be reached" in str(info.value) and "\n" not in str(info.value)


def test_hub_kind_goes_through_timm_download(monkeypatch):
    calls = []

    def fake_create(name, **kwargs):
        calls.append((name, kwargs.get("pretrained"), kwargs.get("pretrained_cfg_overlay")))
        raise RuntimeError("no network here")

    monkeypatch.setattr("transferkit.models.backbones.timm.create_model", fake_create)
    with pytest.raises(WeightsUnavailableError, match="model.weights=hub.*test_resnet"):
        load_weights(torch.nn.Linear(1, 1), WeightsSource("hub", "hub", None, {"hub_id": "timm/x"}),
                     backbone_name="test_resnet", in_chans=3)
    assert calls == [("test_resnet", True, None)]


def test_house_backbone_loads_its_record():
    source = resolve_weights_source("charnet", "resnet10t")
    assert source.kind == "house" and source.record["in_chans"] == 1
    grey = create_backbone("resnet10t", in_chans=1)
    report = load_weights(grey, source, backbone_name="resnet10t", in_chans=1)
    assert report.loaded == len(grey.state_dict()) and not report.missing
