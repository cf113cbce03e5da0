"""The config of `serve`, read once: the model `ckpt_path` names (a run directory, checkpoints or an
exported file, as predict takes it) and the `serve` group, every value checked before anything loads."""

from __future__ import annotations

from omegaconf import DictConfig, OmegaConf

from transferkit.errors import ConfigError, lookup
from transferkit.planning.checkpoint import checkpoint_spec
from transferkit.serving.spec import ACCELERATORS, HOSTS, LOG_LEVELS, ServeSpec, UploadLimits

MODEL_HINT = "a run directory, a checkpoint (.ckpt) or an exported model.onnx / model.torchscript.pt"


def at_least(group: dict, key: str, low: float, kind: type = int):
    """`serve.<key>` as `kind`, refused in one line below `low` or when it is no number."""
    value = group.get(key)
    try:
        number = kind(value)
    except (TypeError, ValueError):
        number = None
    if number is None or isinstance(value, bool) or number < low:
        raise ConfigError(f"serve.{key}={value!r} must be a number >= {low}.")
    return number


def serve_spec(cfg: DictConfig) -> ServeSpec:
    """`serve`'s config as a spec: host, port, batching, workers and limits checked, then the model path."""
    group = OmegaConf.to_container(cfg.serve, resolve=True)
    group["host"] = "127.0.0.1" if group["host"] == "localhost" else group["host"]  # LitServe binds the address
    lookup({h: h for h in HOSTS}, str(group["host"]), "serve.host")
    port = at_least(group, "port", 1024)
    if port > 65535:
        raise ConfigError(f"serve.port={port!r} must be in 1024..65535.")
    limits = UploadLimits(at_least(group, "max_bytes", 1), at_least(group, "max_pixels", 1))
    values = dict(host=str(group["host"]), port=port, max_batch_size=at_least(group, "max_batch_size", 1),
                  batch_timeout=at_least(group, "batch_timeout", 0, float),
                  workers_per_device=at_least(group, "workers_per_device", 1),
                  torch_threads=None if group.get("torch_threads") is None else at_least(group, "torch_threads", 1),
                  accelerator=lookup({a: a for a in ACCELERATORS}, str(group["accelerator"]), "serve.accelerator"),
                  timeout=at_least(group, "timeout", 0.001, float), limits=limits, top_k=int(cfg.top_k),
                  log_level=lookup({v: v for v in LOG_LEVELS}, str(group["log_level"]), "serve.log_level"))
    if cfg.ckpt_path is None:
        raise ConfigError(f"ckpt_path is not set; serve needs the model: {MODEL_HINT}.")
    return ServeSpec(model=checkpoint_spec(cfg.ckpt_path, cfg.get("tta"), exported=True,
                                           calibration=cfg.get("calibration")), **values)
