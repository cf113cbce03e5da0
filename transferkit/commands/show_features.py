"""`python -m transferkit show-features ckpt_path=... input=img.png`: the first conv layer's filters
and the feature maps after each stage, for one image, as `features.png`.

Without `ckpt_path` it shows the configured backbone with its pretrained weights
(`show-features model.weights=charnet input=digit.png`). See `transferkit.evaluation.feature_maps`.
"""

from __future__ import annotations

import logging

from omegaconf import DictConfig, OmegaConf

from transferkit.errors import ConfigError
from transferkit.evaluation.feature_maps import checkpoint_encoder, pretrained_encoder, stage_maps
from transferkit.evaluation.reports.feature_maps import save_feature_figure
from transferkit.planning.plan import plan_spec
from transferkit.tasks.loading import require
from transferkit.training.rundir import create_run_dir, write_config, write_json

log = logging.getLogger("transferkit")


def run(cfg: DictConfig) -> dict:
    path = require(cfg.get("input"), "input", "one image file, e.g. input=photo.jpg")
    if path.is_dir():
        raise ConfigError(f"input={str(path)!r} is a folder; show-features draws one image: pass a file.")
    ckpt = cfg.get("ckpt_path")
    source = (checkpoint_encoder(require(ckpt, "ckpt_path", "a checkpoint written by fit")) if ckpt
              else pretrained_encoder(plan_spec(cfg, "show-features").model))
    maps = stage_maps(source, path)
    run_dir = create_run_dir(cfg.get("run_dir"))
    write_config(OmegaConf.to_container(cfg, resolve=True), run_dir)
    channels = int((cfg.get("show_features") or {}).get("channels", 16))
    png = save_feature_figure(maps.image, maps.weight, maps.stages, run_dir / "features.png", channels=channels,
                              title=f"{path.name} through {ckpt or source.label}")
    record = {"command": "show-features", "input": str(path), "checkpoint": str(ckpt) if ckpt else None,
              "first_conv": list(maps.weight.shape) if maps.weight is not None else None,
              "stages": [{"name": n, "shape": list(f.shape)} for n, f in maps.stages], "features_png": str(png),
              "run_dir": str(run_dir)}
    write_json(record, run_dir / "results.json")
    log.info("Feature maps: %s", png)
    return record
