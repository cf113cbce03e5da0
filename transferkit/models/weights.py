"""Load backbone weights: `none`, `hub` (timm pretrained), a local file, or a house backbone.

`model.weights` accepts:
* `none`: random init (He/Kaiming for convs, timm's defaults);
* `hub`: timm's pretrained weights (needs network, fails fast offline);
* a path to `.safetensors`, `.pth`, `.pt`, `.bin` or a Lightning `.ckpt`;
* the name of a house backbone shipped in `transferkit/assets/` (e.g. `charnet`).
"""

from __future__ import annotations

import json
import logging
import os
import socket
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

import torch
import torch.nn as nn

from transferkit.errors import ConfigError, did_you_mean
from transferkit.network import WeightsUnavailableError, check_hub_reachable  # noqa: F401 (re-export)

log = logging.getLogger(__name__)

PREFIXES = ("state_dict.", "model.", "module.", "backbone.", "encoder.", "_orig_mod.")


@dataclass
class LoadReport:
    """What happened when a state dict was loaded into a backbone."""

    source: str
    loaded: int = 0
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    mismatched: list[str] = field(default_factory=list)
    adapted_in_chans: bool = False


def house_backbones() -> dict[str, dict]:
    """Name -> metadata of every house backbone shipped in `transferkit/assets/`."""
    table = {}
    for entry in resources.files("transferkit.assets").iterdir():
        if entry.name.endswith(".json") and (
            resources.files("transferkit.assets") / entry.name.replace(".json", ".safetensors")
        ).is_file():
            meta = json.loads(entry.read_text())
            table[entry.name.removesuffix(".json")] = meta
    return table


def house_weights_path(name: str) -> Path:
    return Path(str(resources.files("transferkit.assets") / f"{name}.safetensors"))


def classify_weights(weights: str | None) -> str:
    """Return the kind of a `model.weights` value: `none`, `hub`, `house` or `file`."""
    if weights is None or str(weights).lower() in ("none", "null", ""):
        return "none"
    if weights == "hub":
        return "hub"
    if weights in house_backbones():
        return "house"
    path = Path(str(weights)).expanduser()
    if path.is_file():
        return "file"
    if path.suffix or os.sep in str(weights):
        raise ConfigError(
            f"model.weights={weights!r}: no such file. Pass an existing .safetensors/.pth/.ckpt file, "
            f"`hub`, `none`, or a house backbone ({sorted(house_backbones())})."
        )
    raise ConfigError(
        f"model.weights={weights!r} is neither a file, `hub`, `none` nor a house backbone; "
        f"house backbones: {sorted(house_backbones())}.{did_you_mean(weights, house_backbones())}"
    )


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Read tensors from safetensors or a torch file (`weights_only=True`), unwrapping checkpoints."""
    path = Path(path)
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # corrupt or foreign file: say which and why
        raise WeightsUnavailableError(f"model.weights={str(path)!r} could not be read: {err}") from err
    for key in ("state_dict", "model", "model_state_dict"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict):
        raise WeightsUnavailableError(f"model.weights={str(path)!r} does not hold a state dict.")
    return {k: v for k, v in state.items() if isinstance(v, torch.Tensor)}


def strip_prefixes(state: dict[str, torch.Tensor], target_keys: set[str]) -> dict[str, torch.Tensor]:
    """Drop wrapper prefixes (`model.`, `backbone.`, ...) until keys line up with the target."""
    for _ in range(3):
        if len(target_keys & state.keys()) >= max(1, len(target_keys) // 2):
            break
        for prefix in PREFIXES:
            if any(k.startswith(prefix) for k in state):
                state = {k.removeprefix(prefix): v for k, v in state.items() if k.startswith(prefix)}
                break
    return state


def load_backbone_weights(backbone: nn.Module, path: str | Path) -> LoadReport:
    """Load a state dict into `backbone`, tolerating a foreign head and a different `in_chans`."""
    from timm.models import adapt_input_conv

    target = backbone.state_dict()
    state = strip_prefixes(read_state_dict(path), set(target))
    report = LoadReport(source=str(path))
    first_conv = (getattr(backbone, "pretrained_cfg", {}) or {}).get("first_conv")
    first_key = f"{first_conv}.weight" if first_conv else None
    usable = {}
    for key, value in state.items():
        if key not in target:
            report.unexpected.append(key)
        elif value.shape == target[key].shape:
            usable[key] = value.to(target[key].dtype)
        elif key == first_key and value.ndim == 4 and value.shape[0] == target[key].shape[0]:
            in_chans = target[key].shape[1]
            # timm's adapt_input_conv assumes an RGB source; a grey (1-channel) one is spread evenly.
            adapted = (value.float().repeat(1, in_chans, 1, 1) / in_chans if value.shape[1] == 1
                       else adapt_input_conv(in_chans, value.float()))
            usable[key] = adapted.to(target[key].dtype)
            report.adapted_in_chans = True
        else:
            report.mismatched.append(f"{key} {tuple(value.shape)} -> {tuple(target[key].shape)}")
    report.missing = sorted(set(target) - set(usable))
    report.loaded = len(usable)
    if not usable:
        raise WeightsUnavailableError(
            f"model.weights={str(path)!r} has no tensor that fits this backbone "
            f"({len(state)} tensors, e.g. {list(state)[:3]}); is it for another architecture?"
        )
    backbone.load_state_dict(usable, strict=False)
    log_report(report)
    return report


def log_report(report: LoadReport) -> None:
    log.info("Loaded %d tensors from %s", report.loaded, report.source)
    if report.adapted_in_chans:
        log.info("  first conv adapted to the model's in_chans (timm adapt_input_conv)")
    for label, keys in (("missing", report.missing), ("unexpected", report.unexpected),
                        ("shape-mismatched", report.mismatched)):
        if keys:
            log.info("  %d %s keys (e.g. %s)", len(keys), label, ", ".join(keys[:4]))


def init_backbone_weights(backbone: nn.Module, weights: str | None, *, backbone_name: str,
                          in_chans: int, features_only: bool = False) -> LoadReport | None:
    """Initialise `backbone` in place from `model.weights`; returns what was loaded."""
    kind = classify_weights(weights)
    if kind == "none":
        return None
    if kind == "house":
        meta = house_backbones()[weights]
        if meta["backbone"] != backbone_name:
            raise ConfigError(
                f"model.weights={weights!r} is a {meta['backbone']!r} backbone but "
                f"model.backbone={backbone_name!r}; set model.backbone={meta['backbone']}."
            )
        return load_backbone_weights(backbone, house_weights_path(weights))
    if kind == "file":
        return load_backbone_weights(backbone, Path(str(weights)).expanduser())
    check_hub_reachable(backbone_name)
    from transferkit.models.backbones import create_backbone

    try:
        twin = create_backbone(backbone_name, in_chans=in_chans, features_only=features_only, pretrained=True)
    except Exception as err:
        raise WeightsUnavailableError(
            f"model.weights=hub: timm could not load pretrained {backbone_name!r} weights: {err}"
        ) from None
    backbone.load_state_dict(twin.state_dict())
    return LoadReport(source=f"hub:{backbone_name}", loaded=len(twin.state_dict()))


def house_data_config(weights: str | None) -> dict | None:
    """Normalisation recorded with a house backbone (it overrides timm's defaults)."""
    if classify_weights(weights) != "house":
        return None
    meta = house_backbones()[weights]
    return {"mean": list(meta["mean"]), "std": list(meta["std"])}
