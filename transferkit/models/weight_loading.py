"""Load pretrained weights into a backbone, through timm's own pretrained path where it applies.

Files in timm's layout (hub downloads, the Hugging Face cache, `pretrain`'s exports, a user's
`torch.save(model.state_dict())`) go through `timm.create_model(pretrained=True,
pretrained_cfg_overlay=dict(file=...))`, so classifier removal, first-conv channel adaptation and
the architecture's checkpoint filter (e.g. ViT position embeddings at another size) are timm's.
Lightning checkpoints and wrapped state dicts (`model.`, `backbone.` prefixes) are unwrapped here
first. The one download, `hub`, happens only when planning found the weights neither cached nor
local (see `transferkit.models.weights.resolve_weights_source`).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn as nn

from transferkit.models.weights import WEIGHTS_FILE_HINT, WeightsSource
from transferkit.models.network import WeightsUnavailableError
from transferkit.runtime.torch_files import read_torch_file
from transferkit.models.backbones import create_backbone

log = logging.getLogger(__name__)

PREFIXES = ("state_dict.", "model.", "module.", "backbone.", "encoder.", "_orig_mod.")


@dataclass
class LoadReport:
    """What happened when weights were loaded into a backbone."""

    source: str
    loaded: int = 0
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    mismatched: list[str] = field(default_factory=list)
    adapted_in_chans: bool = False
    loader: str = "timm"


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Read tensors from safetensors or a torch file, unwrapping checkpoints.

    Torch files are read weights-only (`transferkit.runtime.torch_files`): one that would run code is refused.
    """
    path = Path(path)
    if path.suffix != ".safetensors":
        state = read_torch_file(path, key="model.weights", hint=WEIGHTS_FILE_HINT)
    else:
        try:
            from safetensors.torch import load_file

            state = load_file(str(path))
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
        if fits(state, target_keys):
            break
        for prefix in PREFIXES:
            if any(k.startswith(prefix) for k in state):
                state = {k.removeprefix(prefix): v for k, v in state.items() if k.startswith(prefix)}
                break
    return state


def fits(state: dict, target_keys: set[str]) -> bool:
    return len(target_keys & state.keys()) >= max(1, len(target_keys) // 2)


def load_backbone_weights(backbone: nn.Module, path: str | Path) -> LoadReport:
    """transferkit's tolerant loader: any prefix, a foreign head, a different `in_chans`."""
    from timm.models import adapt_input_conv

    target = backbone.state_dict()
    state = strip_prefixes(read_state_dict(path), set(target))
    report = LoadReport(source=str(path), loader="transferkit")
    first_conv = (getattr(backbone, "pretrained_cfg", {}) or {}).get("first_conv")
    first_key = f"{first_conv}.weight" if first_conv else None
    usable = {}
    for key, value in state.items():
        if key not in target:
            report.unexpected.append(key)
        elif value.shape == target[key].shape:
            usable[key] = value.to(target[key].dtype)
        elif key == first_key and value.ndim == 4 and value.shape[0] == target[key].shape[0]:
            adapted = adapt_input_conv(target[key].shape[1], value.float(), base_chans=value.shape[1])
            usable[key] = adapted.to(target[key].dtype)
            report.adapted_in_chans = True
        else:
            report.mismatched.append(f"{key} {tuple(value.shape)} -> {tuple(target[key].shape)}")
    report.missing = sorted(set(target) - set(usable))
    report.loaded = len(usable)
    if not usable:
        raise WeightsUnavailableError(
            f"model.weights={str(path)!r} has no tensor that fits this backbone "
            f"({len(state)} tensors, e.g. {list(state)[:3]}); is it for another architecture?")
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


def timm_overlay(source: WeightsSource, target_keys: set[str]) -> tuple[dict | None, set[str] | None]:
    """`pretrained_cfg_overlay` for timm, and the keys the file holds (None when not read).

    `file=` when the file's keys are timm's, `state_dict=` once wrapper prefixes are stripped; no
    overlay when they do not fit (the tolerant loader takes over).
    """
    assert source.path is not None
    overlay: dict = {}
    if source.record.get("in_chans"):
        size = int(source.record.get("image_size") or 224)
        overlay["input_size"] = (int(source.record["in_chans"]), size, size)
    if source.kind == "hf-cache":
        return {**overlay, "file": source.path}, None  # timm's own hub layout
    path = Path(source.path)
    state = read_state_dict(path)
    plain = {k.removeprefix("module."): v for k, v in state.items()}
    if path.suffix != ".ckpt" and fits(plain, target_keys):
        return {**overlay, "file": str(path)}, set(plain)
    state = strip_prefixes(state, target_keys)
    return ({**overlay, "state_dict": state}, set(state)) if fits(state, target_keys) else (None, None)


def load_weights(module: nn.Module, source: WeightsSource, *, backbone_name: str, in_chans: int,
                 image_size: int | None = None, cache_dir: str | None = None) -> LoadReport | None:
    """Initialise `module` (a backbone built by `create_backbone`) in place from `source`."""
    if source.kind == "none":
        return None
    target_keys = set(module.state_dict())
    if source.kind == "hub":
        overlay, file_keys, label = None, None, f"hub:{source.record.get('hub_id', backbone_name)}"
    else:
        (overlay, file_keys), label = timm_overlay(source, target_keys), str(source.path)
        if overlay is None:
            return load_backbone_weights(module, str(source.path))
    try:
        with torch.random.fork_rng(devices=[]):  # the twin's random init must not shift training's stream
            twin = create_backbone(backbone_name, in_chans=in_chans, image_size=image_size, pretrained=True,
                                   pretrained_cfg_overlay=overlay, cache_dir=cache_dir)
    except Exception as err:  # noqa: BLE001 - timm could not adapt it; say which file and why
        if source.kind == "hub":
            raise WeightsUnavailableError(f"model.weights={source.requested}: timm could not load "
                                          f"pretrained {backbone_name!r} weights: {err}") from None
        log.info("timm's loader refused %s (%s); using transferkit's tolerant loader", label, err)
        return load_backbone_weights(module, str(source.path))
    loaded = {k: v for k, v in twin.state_dict().items() if k in target_keys}
    module.load_state_dict(loaded, strict=False)
    from_file = target_keys if file_keys is None else target_keys & file_keys
    report = LoadReport(source=label, loaded=len(from_file), missing=sorted(target_keys - from_file),
                        adapted_in_chans=bool(overlay and overlay.get("input_size", (in_chans,))[0] != in_chans))
    log_report(report)
    return report
