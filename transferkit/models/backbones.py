"""The one place that calls `timm.create_model`."""

from __future__ import annotations

import logging

import timm
import torch.nn as nn

from transferkit.errors import ConfigError, did_you_mean

log = logging.getLogger(__name__)


def check_backbone_name(name: str) -> None:
    """Fail early, naming `model.backbone`, when timm has no such architecture."""
    if not timm.is_model(name):
        raise ConfigError(
            f"model.backbone={name!r} is not a timm architecture.{did_you_mean(name, timm.list_models())} "
            "List them with `python -c \"import timm; print(timm.list_models('resnet*'))\"`."
        )


def create_backbone(
    name: str,
    *,
    in_chans: int = 3,
    features_only: bool = False,
    out_indices: tuple[int, ...] | None = None,
    drop_rate: float = 0.0,
    drop_path_rate: float = 0.0,
    image_size: int | None = None,
    pretrained: bool = False,
    pretrained_cfg_overlay: dict | None = None,
    cache_dir: str | None = None,
) -> nn.Module:
    """Create a timm backbone without its classifier (`num_classes=0`), or a feature pyramid.

    `image_size` is passed to architectures with a fixed input size (ViT position embeddings).
    `pretrained=True` loads through timm: from `pretrained_cfg_overlay`'s `file`/`state_dict` when
    given, else from the hub (a download); callers go through `transferkit.models.weight_loading`.
    """
    check_backbone_name(name)
    kwargs: dict = {"in_chans": in_chans, "pretrained": pretrained}
    if pretrained and pretrained_cfg_overlay:
        kwargs["pretrained_cfg_overlay"] = pretrained_cfg_overlay
    if pretrained and cache_dir:
        kwargs["cache_dir"] = cache_dir
    if image_size and has_fixed_input_size(name):
        kwargs["img_size"] = int(image_size)
    if drop_path_rate:
        kwargs["drop_path_rate"] = drop_path_rate
    if features_only:
        kwargs["features_only"] = True
        if out_indices is not None:
            kwargs["out_indices"] = tuple(out_indices)
    else:
        kwargs["num_classes"] = 0
        if drop_rate:
            kwargs["drop_rate"] = drop_rate
    return timm.create_model(name, **kwargs)


def has_fixed_input_size(name: str) -> bool:
    """True for architectures whose weights fix the input size (ViT: position embeddings)."""
    from timm.models import get_pretrained_cfg

    cfg = get_pretrained_cfg(name)
    return bool(cfg is not None and cfg.fixed_input_size)
