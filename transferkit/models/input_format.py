"""The input format weights were trained with: channels, size, mean/std, resize filter."""

from __future__ import annotations

from dataclasses import asdict, dataclass

INTERPOLATIONS = ("bilinear", "bicubic", "nearest", "area")


@dataclass(frozen=True)
class InputFormat:
    in_chans: int
    image_size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    interpolation: str
    source: str  # where it was read: a record file, timm's pretrained cfg (`timm:<arch>.<tag>`)

    def to_dict(self) -> dict:
        return {**asdict(self), "mean": list(self.mean), "std": list(self.std)}


def match_channels(values, in_chans: int) -> list[float]:
    """Adapt per-channel statistics to `in_chans` (grey = average of RGB, extra channels repeat)."""
    values = [float(v) for v in values]
    if len(values) == in_chans:
        return values
    if in_chans == 1:
        return [sum(values) / len(values)]
    return [values[i % len(values)] for i in range(in_chans)]


def timm_format(backbone: str) -> InputFormat:
    """The architecture's pretrained config in timm (its default tag unless `backbone` names one)."""
    from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
    from timm.models import get_pretrained_cfg

    cfg = get_pretrained_cfg(backbone)
    if cfg is None:
        return InputFormat(3, 224, tuple(IMAGENET_DEFAULT_MEAN), tuple(IMAGENET_DEFAULT_STD), "bilinear",
                           f"timm defaults ({backbone} has no pretrained config)")
    interpolation = cfg.interpolation if cfg.interpolation in INTERPOLATIONS else "bilinear"
    return InputFormat(int(cfg.input_size[0]), int(cfg.input_size[-1]), tuple(cfg.mean), tuple(cfg.std),
                       interpolation, f"timm:{cfg.architecture}.{cfg.tag}" if cfg.tag else f"timm:{backbone}")


def native_format(backbone: str, record: dict | None = None, source: str = "record") -> InputFormat:
    """The weights' own format: their record (house json, `backbone.json`, a checkpoint) where it
    says, timm's pretrained config of `backbone` for the rest."""
    base = timm_format(backbone)
    record = record or {}
    if not any(k in record for k in ("in_chans", "image_size", "mean", "std")):
        return base
    in_chans = int(record.get("in_chans") or base.in_chans)
    mean = match_channels(record.get("mean") or base.mean, in_chans)
    std = match_channels(record.get("std") or base.std, in_chans)
    return InputFormat(in_chans, int(record.get("image_size") or base.image_size), tuple(mean), tuple(std),
                       str(record.get("interpolation") or "bilinear"), source)
