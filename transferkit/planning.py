"""Every run decision, made once, before anything is built.

`plan_model` resolves the model, its weights and its input format; `plan_training` the fine-tuning
plan (`finetune.strategy=auto`) and the feature cache. What they return is a read-only config:
builders read it, nothing writes into it. What they decided and why goes to `results.json`.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

from omegaconf import DictConfig, OmegaConf, open_dict

from transferkit.rng_state import preserved_rng
from transferkit.errors import ConfigError
from transferkit.models.input_format import INTERPOLATIONS, InputFormat, match_channels, native_format
from transferkit.models.weights import (WeightsSource, classify_weights, file_record, house_backbones,
                                        resolve_weights_source)
from transferkit.race import RACE_PROGRESS, RacePlan, plan_from_record, plan_race

log = logging.getLogger("transferkit")

AUTO = "auto"
EMBEDDED_HOUSE = "charnet"     # the model of the embedded data sets (offline demo)
FOLDER_BACKBONE = "resnet50"   # the model of a user's folder: ImageNet weights, cached or downloaded
TRAINS_ON_FEATURES = ("freeze", "partial")  # strategies that keep (some) backbone features fixed
# Trainer keys a head solved by L-BFGS needs: one validating epoch, whose one zero-LR step is a
# manual-optimization step (Lightning refuses clipping or accumulation there).
SOLVED_HEAD_TRAINER = {"max_epochs": 1, "gradient_clip_val": None, "accumulate_grad_batches": 1}


@dataclass(frozen=True)
class ModelChoice:
    backbone: str
    weights: str
    format_record: dict  # the record the input format is read from ({} = timm's pretrained cfg)
    why: str


@dataclass
class Plan:
    """The resolved, read-only config and the record of what planning decided."""

    cfg: DictConfig
    weights: WeightsSource
    input: InputFormat
    notes: list[str] = field(default_factory=list)
    advice: dict | None = None
    cache: dict = field(default_factory=dict)
    race: RacePlan | None = None

    def to_dict(self) -> dict:
        return {"weights": self.weights.to_dict(), "input": self.input.to_dict(), "notes": list(self.notes)}


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


def plan_model(cfg: DictConfig, *, load_weights: bool = True) -> Plan:
    """Resolve `model.backbone`, `model.weights`, `model.in_chans` and the data's input format.

    With `load_weights`, weights that cannot be had (not cached, hub unreachable) stop the run here.
    """
    from transferkit.data.discover import check_root
    from transferkit.data.embedded import embedded_spec
    from transferkit.models.backbones import check_backbone_name

    model, data = cfg.model, cfg.data
    # embedded data, or the user's folder: a mistyped data.root is told before any weights are looked for
    spec = (embedded_spec(str(data.embedded), str(cfg.task.kind)) if data.get("root") is None
            else check_root(Path(str(data.root)).expanduser(), str(cfg.task.kind)))
    choice = choose_model(str(model.backbone), str(model.weights), embedded=spec is not None)
    check_backbone_name(choice.backbone)
    source = resolve_weights_source(choice.weights, choice.backbone, cache_dir=model.get("cache_dir"),
                                    require_available=load_weights)
    record = choice.format_record or (source.record if source.kind in ("house", "file") else {})
    native = native_format(choice.backbone, record, source=source.path or choice.why)
    given = {"in_chans": model.get("in_chans"), **{k: data.get(k) for k in ("image_size", "mean", "std", "interpolation")}}
    hint = {"in_chans": spec.in_chans, "image_size": spec.image_size} if spec is not None else {}
    fmt, warnings = choose_input_format(native, given, hint)
    for warning in warnings if source.kind != "none" else []:
        log.warning("%s", warning)
    resolved = OmegaConf.create(OmegaConf.to_container(cfg, resolve=True))
    with open_dict(resolved):
        resolved.model.backbone, resolved.model.in_chans = choice.backbone, fmt.in_chans
        resolved.model.weights = source.path if source.kind in ("file", "hf-cache") else choice.weights
        resolved.data.image_size, resolved.data.interpolation = fmt.image_size, fmt.interpolation
        resolved.data.mean, resolved.data.std = list(fmt.mean), list(fmt.std)
    log.info("Model: %s, weights %s; input %d ch, %d px, %s (%s)", choice.backbone, source.describe(),
             fmt.in_chans, fmt.image_size, fmt.interpolation, choice.why)
    return Plan(resolved, source, fmt, notes=[choice.why, *warnings])


def plan_finetune(plan: Plan, datamodule) -> tuple[dict, dict | None]:
    """The `finetune` group to train with, and the advice record when `auto` measured the data."""
    cfg = plan.cfg
    finetune = OmegaConf.to_container(cfg.finetune, resolve=True)
    strategy = finetune.get("strategy")
    if strategy == AUTO and cfg.task.kind != "classification":
        raise ConfigError(f"finetune=auto measures classification data; with task.kind={cfg.task.kind!r} "
                          "choose finetune=freeze|partial|full.")
    if plan.weights.kind == "none":
        if strategy == AUTO:
            note = "finetune=auto with model.weights=none: training from scratch (strategy full)"
            log.info("%s", note)
            plan.notes.append(note)
            return {**finetune, "strategy": "full", "backbone_lr_scale": 1.0}, None
        if strategy in TRAINS_ON_FEATURES:
            raise ConfigError(
                f"finetune.strategy={strategy!r} with model.weights=none would train on random frozen "
                "features. Use pretrained weights (model.weights=auto, charnet or a file), or train from "
                "scratch with finetune=full.")
    if strategy != AUTO:
        return finetune, None
    averaging = [f"{key}={OmegaConf.select(cfg, key)!r}" for key in ("ema.decay", "swa.epoch_start")
                 if OmegaConf.select(cfg, key) is not None]
    if averaging:
        raise ConfigError(f"{', '.join(averaging)} with finetune=auto: the race trains its candidates in legs, "
                          "which weight averaging does not follow yet. Choose finetune=freeze|partial|full, or "
                          "set ema.decay=null and swa.epoch_start=null.")
    recorded = recorded_race(cfg)
    if recorded is not None:  # `fit resume=` of a race stopped mid-way: the race it planned, as it was
        advice, plan.race = recorded.get("advice"), plan_from_record(finetune, recorded["plan"])
    else:
        from transferkit.measure import measure_datamodule

        with preserved_rng():  # measuring must not change training's random stream
            advice = measure_datamodule(cfg, datamodule, plan.weights, quick=True).to_dict()
        plan.race = plan_race(finetune, advice, int(cfg.trainer.max_epochs))
    race = plan.race
    log.info("finetune=auto: racing %s; cuts at epochs %s; scratch %s (%s)",
             ", ".join(c.name for c in race.candidates), [r.end for r in race.rungs],
             "enters" if race.scratch["entered"] else "left out", race.scratch["why"])
    return finetune, advice


def recorded_race(cfg: DictConfig) -> dict | None:
    """The race/progress.json of the run being resumed, if it stopped mid-race."""
    if not cfg.get("resume"):
        return None
    path = Path(str(cfg.resume)) / RACE_PROGRESS
    return json.loads(path.read_text()) if path.is_file() else None


def plan_cache(cfg: DictConfig, finetune: dict) -> dict:
    """Whether to train the head on cached backbone features (finetune.cache_features), and why."""
    from transferkit.data.feature_cache import cache_blockers, choose_feature_cache

    if finetune.get("strategy") == AUTO:
        return {"used": False, "requested": finetune.get("cache_features"),
                "reasons": ["finetune=auto: decided per race candidate (freeze trains on cached features)"]}
    model, augment = cfg.model, cfg.augment
    blockers = cache_blockers(cfg.task.kind, finetune.get("strategy"), finetune.get("unfreeze_at_epoch"),
                              augment.get("name"), augment.get("mixup_alpha", 0.0),
                              augment.get("cutmix_alpha", 0.0), model.get("drop_rate", 0.0),
                              model.get("drop_path_rate", 0.0), model.get("spatial_dropout", 0.0),
                              str(cfg.data.get("decode", "cpu")))
    requested = finetune.get("cache_features")
    wasteful = "trainer.fast_dev_run reads only a batch or two" if cfg.trainer.get("fast_dev_run") else None
    use = choose_feature_cache(requested, blockers, wasteful)
    why = blockers or ([wasteful] if wasteful and requested is None else [])
    if not use:
        log.info("Feature cache off (finetune.cache_features=%r)%s", requested, ": " + "; ".join(why) if why else "")
    return {"used": use, "requested": requested, "reasons": why}


def plan_head(plan: Plan, finetune: dict) -> tuple[dict, dict]:
    """`finetune.head_solver` and `finetune.lpft` (tasks/linear_probe.py): the finetune group, and the
    trainer keys they decide.

    With strategy freeze and head_solver lbfgs the head is solved once before the first epoch, so one
    epoch (its validation, best.ckpt and last.ckpt) is all that is left: trainer.max_epochs=1.
    Segmentation has no linear head to solve: it trains its decoder by SGD (lpft=true is an error).
    """
    from transferkit.finetune import FinetunePlan

    cfg, head = plan.cfg, FinetunePlan(**finetune)
    if cfg.task.kind != "classification" and head.probes_first:
        if head.lpft:
            raise ConfigError(f"finetune.lpft=True needs a linear classifier head; task.kind={cfg.task.kind!r} "
                              "trains a decoder. Set finetune.lpft=false.")
        plan.notes.append("finetune.head_solver=lbfgs applies to classification; segmentation uses sgd")
        return {**finetune, "head_solver": "sgd"}, {}
    if not head.solves_head:
        return finetune, {}
    trainer = {k: v for k, v in SOLVED_HEAD_TRAINER.items() if cfg.trainer.get(k, v) != v}
    if trainer:
        note = "finetune.head_solver=lbfgs solves the head before training: " + ", ".join(
            f"trainer.{k} {cfg.trainer.get(k)} -> {v}" for k, v in trainer.items()) + " (one epoch validates it)"
        log.info("%s", note)
        plan.notes.append(note)
    return finetune, trainer


def check_device_decode(cfg: DictConfig, finetune: dict) -> None:
    """`data.decode=gpu` batches exist only inside the training loop: nothing may read the dataset itself."""
    from transferkit.finetune import FinetunePlan

    if str(cfg.data.get("decode", "cpu")) != "gpu":
        return
    if finetune.get("strategy") == AUTO or FinetunePlan(**finetune).probes_first:
        raise ConfigError("data.decode=gpu decodes inside the training loop, but finetune=auto, "
                          "finetune.head_solver=lbfgs and finetune.lpft=true read the images before it; "
                          "choose finetune=freeze|partial|full with finetune.head_solver=sgd, or data.decode=cpu.")


def plan_training(plan: Plan, datamodule) -> Plan:
    """Resolve the fine-tuning plan and the feature cache; the config is read-only afterwards."""
    from transferkit.lr_finder import wants_search
    from transferkit.optim import check_optimizer_group

    check_device_decode(plan.cfg, OmegaConf.to_container(plan.cfg.finetune, resolve=True))
    check_optimizer_group(OmegaConf.to_container(plan.cfg.optimizer, resolve=True), wants_search(plan.cfg))
    finetune, advice = plan_finetune(plan, datamodule)
    cache = plan_cache(plan.cfg, finetune)
    finetune, trainer = plan_head(plan, finetune)
    with open_dict(plan.cfg):
        plan.cfg.finetune = {**finetune, "cache_features": cache["used"]}
        for key, value in trainer.items():
            plan.cfg.trainer[key] = value
    OmegaConf.set_readonly(plan.cfg, True)
    plan.advice, plan.cache = advice, cache
    return plan


def plan_for_checkpoint(cfg: DictConfig, hparams: dict) -> DictConfig:
    """The config to evaluate a trained task with: its model and input format come from the
    checkpoint (`hparams`), the data and trainer from `cfg`. Read-only."""
    model, data = dict(hparams.get("model") or {}), dict(hparams.get("data_config") or {})
    resolved = OmegaConf.create(OmegaConf.to_container(cfg, resolve=True))
    with open_dict(resolved):
        resolved.model.backbone = model.get("backbone", resolved.model.backbone)
        resolved.model.in_chans = int(data.get("in_chans", model.get("in_chans", 3)))
        for key in ("image_size", "mean", "std"):
            if key in data:
                resolved.data[key] = data[key]
        resolved.data.interpolation = data.get("interpolation", "bilinear")
    OmegaConf.set_readonly(resolved, True)
    return resolved
