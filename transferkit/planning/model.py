"""The model of a run: which architecture and weights `model=auto` stands for, and the input format."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import logging

from transferkit.data.discover import check_root
from transferkit.data.streaming.store import ObjectStore, check_store, is_remote
from transferkit.data.embedded import embedded_spec
from transferkit.errors import ConfigError
from transferkit.models.backbones import check_backbone_name
from transferkit.models.input_format import INTERPOLATIONS, InputFormat, match_channels, native_format
from transferkit.models.weights import (WeightsSource, classify_weights, file_record, house_backbones,
                                        resolve_weights_source)

log = logging.getLogger("transferkit")

AUTO = "auto"
EMBEDDED_HOUSE = "charnet"     # the model of the embedded data sets (offline demo)
FOLDER_BACKBONE = "resnet50"   # the model of a user's folder: ImageNet weights, cached or downloaded


@dataclass(frozen=True)
class ModelPlan:
    """The model decided for a run: the choice, its weights, the input format, the model and data groups
    with those resolved (as the task and the datamodule receive them), and why."""

    choice: ModelChoice
    source: WeightsSource
    input: InputFormat
    options: dict
    data: dict
    notes: tuple[str, ...]


@dataclass(frozen=True)
class ModelChoice:
    backbone: str
    weights: str
    format_record: dict  # the record the input format is read from ({} = timm's pretrained cfg)
    why: str


def is_auto(value) -> bool:
    return value is None or str(value) == AUTO


def choose_model(backbone: str, weights: str, *, embedded: bool) -> ModelChoice:
    """Which architecture and weights `model=auto` (and partial choices) stand for."""
    house = house_backbones()
    kind = classify_weights(weights)
    if kind == "house":
        arch = house[weights]["backbone"]
        if not is_auto(backbone) and backbone != arch:
            raise ConfigError(f"model.weights={weights!r} is a {arch!r} backbone but model.backbone={backbone!r}; "
                              f"drop model.backbone (or set it to {arch}), or choose other weights.")
        return ModelChoice(arch, weights, house[weights], f"house backbone {weights} ({arch})")
    if kind == "file":
        record = file_record(Path(str(weights)).expanduser())
        if is_auto(backbone) and not record.get("backbone"):
            raise ConfigError(f"model.weights={str(weights)!r} has no record of its architecture (no backbone.json "
                              "beside it); name it with model=<catalogue option> or model.backbone=<timm name>.")
        arch = record.get("backbone") if is_auto(backbone) else backbone
        return ModelChoice(str(arch), str(weights), record if record.get("backbone") == arch else {},
                           f"weights file {weights}")
    if not is_auto(backbone):
        return ModelChoice(str(backbone), "hub" if kind == AUTO else str(weights), {},
                           f"model.backbone={backbone}")
    if embedded:
        record = house[EMBEDDED_HOUSE]
        chosen = EMBEDDED_HOUSE if kind == AUTO else str(weights)
        return ModelChoice(record["backbone"], chosen, record,
                           f"embedded data: the house backbone {EMBEDDED_HOUSE}'s architecture and input format")
    return ModelChoice(FOLDER_BACKBONE, "hub" if kind == AUTO else str(weights), {},
                       f"your folder (data.root): {FOLDER_BACKBONE} with its ImageNet weights")


def choose_input_format(native: InputFormat, given: dict, hint: dict) -> tuple[InputFormat, list[str]]:
    """The run's input format: a value the user set wins, then the embedded data's own format
    (`hint`), then the weights' native one. Returns it and any warnings."""
    in_chans = int(given["in_chans"] if not is_auto(given.get("in_chans")) else hint.get("in_chans") or native.in_chans)
    size = int(given["image_size"] if not is_auto(given.get("image_size")) else hint.get("image_size") or native.image_size)
    for key, value in (("model.in_chans", in_chans), ("data.image_size", size)):
        if value < 1:
            raise ConfigError(f"{key}={value} must be >= 1 (or auto).")
    mean = given["mean"] if not is_auto(given.get("mean")) else match_channels(native.mean, in_chans)
    std = given["std"] if not is_auto(given.get("std")) else match_channels(native.std, in_chans)
    interpolation = str(given["interpolation"] if not is_auto(given.get("interpolation")) else native.interpolation)
    if interpolation not in INTERPOLATIONS:
        raise ConfigError(f"data.interpolation={interpolation!r} is unknown; use one of {['auto', *INTERPOLATIONS]}.")
    if in_chans not in (1, 3) and is_auto(given.get("mean")):
        raise ConfigError(f"model.in_chans={in_chans!r}: give data.mean and data.std with {in_chans} values.")
    warnings = []
    if size < native.image_size / 2:
        warnings.append(f"data.image_size={size} is below half the weights' native {native.image_size} px "
                        f"({native.source}); features at this size are much weaker. Use data.image_size=auto.")
    return InputFormat(in_chans, size, tuple(float(v) for v in mean), tuple(float(v) for v in std),
                       interpolation, native.source), warnings


def plan_model(model: dict, data: dict, kind: str, load_weights: bool = True) -> ModelPlan:
    """Resolve `model.backbone`, `model.weights`, `model.in_chans` and the data's input format.

    With `load_weights`, weights that cannot be had (not cached, hub unreachable) stop the run here.
    """
    # embedded data, or the user's folder: a mistyped data.root is told before any weights are looked for
    root = None if data.get("root") is None else str(data["root"])
    if root is not None and is_remote(root):  # an object store: its extra, credentials and bucket, told here
        check_store(ObjectStore(root, dict(data.get("storage_options") or {})))
    found = (embedded_spec(str(data["embedded"]), kind) if root is None
             else None if is_remote(root) else check_root(Path(root).expanduser(), kind))
    choice = choose_model(str(model["backbone"]), str(model["weights"]), embedded=found is not None)
    check_backbone_name(choice.backbone)
    source = resolve_weights_source(choice.weights, choice.backbone, cache_dir=model.get("cache_dir"),
                                    require_available=load_weights)
    record = choice.format_record or (source.record if source.kind in ("house", "file") else {})
    native = native_format(choice.backbone, record, source=source.path or choice.why)
    given = {"in_chans": model.get("in_chans"), **{k: data.get(k) for k in ("image_size", "mean", "std", "interpolation")}}
    hint = {"in_chans": found.in_chans, "image_size": found.image_size} if found is not None else {}
    fmt, warnings = choose_input_format(native, given, hint)
    for warning in warnings if source.kind != "none" else []:
        log.warning("%s", warning)
    log.info("Model: %s, weights %s; input %d ch, %d px, %s (%s)", choice.backbone, source.describe(),
             fmt.in_chans, fmt.image_size, fmt.interpolation, choice.why)
    weights = source.path if source.kind in ("file", "hf-cache") else choice.weights
    options = {**model, "backbone": choice.backbone, "in_chans": fmt.in_chans, "weights": weights}
    data = {**data, "image_size": fmt.image_size, "interpolation": fmt.interpolation,
            "mean": list(fmt.mean), "std": list(fmt.std)}
    return ModelPlan(choice, source, fmt, options, data, (choice.why, *warnings))
