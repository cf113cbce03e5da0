"""`python -m transferkit show-features ckpt_path=... input=img.png`: the first conv layer's filters
and the feature maps after each stage, for one image, as `features.png`.

Without `ckpt_path` it shows the configured backbone with its pretrained weights
(`show-features model.weights=charnet input=digit.png`).
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
from omegaconf import DictConfig

from transferkit.errors import ConfigError
from transferkit.tasks.loading import load_task, require
from transferkit.training.rundir import create_run_dir, write_config, write_json

log = logging.getLogger("transferkit")


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


def from_checkpoint(path: Path) -> tuple[nn.Module, dict]:
    task = load_task(path)
    return task.encoder.eval(), dict(task.hparams.data_config)


def from_config(cfg: DictConfig) -> tuple[nn.Module, dict]:
    from transferkit.models.backbones import create_backbone
    from transferkit.models.weight_loading import load_weights
    from transferkit.planning.plan import plan_model

    plan = plan_model(cfg)
    model, data = plan.cfg.model, plan.cfg.data
    encoder = create_backbone(str(model.backbone), in_chans=int(model.in_chans), image_size=int(data.image_size))
    load_weights(encoder, plan.weights, backbone_name=str(model.backbone), in_chans=int(model.in_chans),
                 image_size=int(data.image_size), cache_dir=model.get("cache_dir"))
    encoder.pretrained_label = f"{model.backbone} ({plan.weights.describe()})"
    return encoder.eval(), {"image_size": int(data.image_size), "mean": list(data.mean), "std": list(data.std),
                            "in_chans": int(model.in_chans), "interpolation": str(data.interpolation)}


def run(cfg: DictConfig) -> dict:
    from transferkit.data.decode import load_image
    from transferkit.data.transforms import build_transforms
    from transferkit.evaluation.reports.feature_maps import save_feature_figure

    path = require(cfg.get("input"), "input", "one image file, e.g. input=photo.jpg")
    if path.is_dir():
        raise ConfigError(f"input={str(path)!r} is a folder; show-features draws one image: pass a file.")
    ckpt = cfg.get("ckpt_path")
    encoder, data = from_checkpoint(require(ckpt, "ckpt_path", "a checkpoint written by fit")) if ckpt else from_config(cfg)
    image = load_image(path, in_chans=int(data["in_chans"]))
    transform = build_transforms("none", train=False, image_size=int(data["image_size"]), mean=data["mean"],
                                 std=data["std"], in_chans=int(data["in_chans"]),
                                 interpolation=data.get("interpolation", "bilinear"))
    tensor = transform(image=image)["image"].unsqueeze(0)
    features = stage_features(encoder, tensor)
    stages = [(name, f[0].float().numpy()) for name, f in zip(stage_labels(encoder, len(features)), features) if f.dim() == 4]
    conv = first_conv(encoder)
    weight = conv.weight.detach().float().numpy() if conv is not None else None
    run_dir = create_run_dir(cfg.run_dir)
    write_config(cfg, run_dir)
    shown = image[..., 0] if image.ndim == 3 and image.shape[2] == 1 else image
    title = f"{path.name} through {ckpt or getattr(encoder, 'pretrained_label', cfg.model.backbone)}"
    png = save_feature_figure(np.asarray(shown), weight, stages, run_dir / "features.png",
                              channels=int((cfg.get("show_features") or {}).get("channels", 16)), title=title)
    record = {"command": "show-features", "input": str(path), "checkpoint": str(ckpt) if ckpt else None,
              "first_conv": list(weight.shape) if weight is not None else None,
              "stages": [{"name": n, "shape": list(f.shape)} for n, f in stages], "features_png": str(png),
              "run_dir": str(run_dir)}
    write_json(record, run_dir / "results.json")
    log.info("Feature maps: %s", png)
    return record
