"""What a backbone sees (the `show-features` command): its first conv layer's filters and one image's
feature maps after each stage, from a trained checkpoint or from the planned backbone with its
pretrained weights. `transferkit.evaluation.reports.feature_maps` draws them."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

from transferkit.data.decode import load_image
from transferkit.data.transforms import build_transforms
from transferkit.errors import ConfigError
from transferkit.models.backbones import create_backbone
from transferkit.models.weight_loading import load_weights
from transferkit.planning.spec import ModelSpec
from transferkit.tasks.loading import load_task


@dataclass(frozen=True)
class FeatureSource:
    """An encoder in eval mode, the input format it was trained with, and what to call it."""

    encoder: nn.Module
    data: dict  # image_size, mean, std, in_chans, interpolation
    label: str


@dataclass(frozen=True)
class StageMaps:
    """One image as shown, the first conv's weights (C_out x C_in x k x k) and each stage's maps (C x H x W)."""

    image: np.ndarray
    weight: np.ndarray | None
    stages: list[tuple[str, np.ndarray]]


def first_conv(module: nn.Module) -> nn.Conv2d | None:
    return next((m for m in module.modules() if isinstance(m, nn.Conv2d)), None)


def stage_features(encoder: nn.Module, images: torch.Tensor) -> list[torch.Tensor]:
    """Feature maps after each stage: timm's `forward_intermediates`, or a features-only encoder's list."""
    with torch.inference_mode():
        if hasattr(encoder, "forward_intermediates"):
            return list(encoder.forward_intermediates(images, intermediates_only=True))
        out = encoder(images)
    if isinstance(out, (list, tuple)):
        return list(out)
    raise ConfigError(f"{type(encoder).__name__} has no per-stage outputs (timm's forward_intermediates).")


def stage_labels(encoder: nn.Module, count: int) -> list[str]:
    info = getattr(encoder, "feature_info", None)
    names = [f["module"] for f in info] if isinstance(info, list) else getattr(info, "module_name", lambda: [])()
    return list(names)[-count:] if len(names) >= count else [f"stage {k}" for k in range(count)]


def checkpoint_encoder(path: Path) -> FeatureSource:
    """The encoder of a trained task and the input format its checkpoint records."""
    task = load_task(path)
    return FeatureSource(task.encoder.eval(), dict(task.hparams.data_config), str(path))


def pretrained_encoder(model: ModelSpec) -> FeatureSource:
    """The planned backbone with its pretrained weights, in the planned input format."""
    fmt = model.input
    encoder = create_backbone(model.backbone, in_chans=fmt.in_chans, image_size=fmt.image_size)
    load_weights(encoder, model.weights, backbone_name=model.backbone, in_chans=fmt.in_chans,
                 image_size=fmt.image_size, cache_dir=model.cache_dir)
    data = {"image_size": fmt.image_size, "mean": list(fmt.mean), "std": list(fmt.std), "in_chans": fmt.in_chans,
            "interpolation": fmt.interpolation}
    return FeatureSource(encoder.eval(), data, f"{model.backbone} ({model.weights.describe()})")


def stage_maps(source: FeatureSource, path: Path) -> StageMaps:
    """The image at `path` through the encoder (eval transform): the first conv's filters and each
    stage's feature maps."""
    data = source.data
    image = load_image(path, in_chans=int(data["in_chans"]))
    transform = build_transforms("none", train=False, image_size=int(data["image_size"]), mean=data["mean"],
                                 std=data["std"], in_chans=int(data["in_chans"]),
                                 interpolation=data.get("interpolation", "bilinear"))
    tensor = transform(image=image)["image"].unsqueeze(0)
    features = stage_features(source.encoder, tensor)
    labels = stage_labels(source.encoder, len(features))
    stages = [(name, f[0].float().numpy()) for name, f in zip(labels, features) if f.dim() == 4]
    conv = first_conv(source.encoder)
    weight = conv.weight.detach().float().numpy() if conv is not None else None
    shown = image[..., 0] if image.ndim == 3 and image.shape[2] == 1 else image
    return StageMaps(np.asarray(shown), weight, stages)
