"""Every run decision, made once, before anything is built: the composed config becomes a `RunSpec`.

`plan_spec` resolves the model, its weights and the input format; `plan_run` then scans the data and
resolves fine-tuning (`finetune.strategy=auto` measures and plans the race), the feature cache, the
solved head and `optimizer.lr=find`. The spec is final: nothing below planning changes it, and no
function below planning sees the config. What was decided and why goes to `results.json`.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, replace
from pathlib import Path

import pytorch_lightning as pl
from omegaconf import DictConfig, OmegaConf

from transferkit.data.discover import check_root
from transferkit.data.embedded import embedded_spec
from transferkit.errors import ConfigError
from transferkit.models.backbones import check_backbone_name
from transferkit.models.input_format import native_format
from transferkit.models.weights import resolve_weights_source
from transferkit.planning.finetune import check_device_decode, plan_cache, plan_finetune, plan_head
from transferkit.planning.model import choose_input_format, choose_model
from transferkit.planning.spec import (AugmentSpec, CallbacksSpec, DataSpec, FinetuneSpec, ModelSpec, OutputSpec,
                                       RunSpec, TaskSpec, TrainerSpec)
from transferkit.runtime.rng_state import preserved_rng
from transferkit.search.lr_finder import check_searchable, find_lr, wants_search
from transferkit.tasks.loading import read_checkpoint, require
from transferkit.tasks.optim import check_optimizer_group
from transferkit.training.builders import build_datamodule

log = logging.getLogger("transferkit")

LIGHTNING_CKPT_NAMES = ("last", "best", "hpc", "registry")  # names trainer.fit(ckpt_path=...) looks up


def plan_spec(cfg: DictConfig, command: str, *, load_weights: bool = True) -> RunSpec:
    """The composed config as a spec, with the model, its weights and the input format resolved.

    With `load_weights`, weights that cannot be had (not cached, hub unreachable) stop the run here.
    """
    return spec_of(OmegaConf.to_container(cfg, resolve=True), command, load_weights=load_weights)


def spec_of(config: dict, command: str, *, load_weights: bool = True) -> RunSpec:
    model, data, kind = config["model"], config["data"], str(config["task"]["kind"])
    # embedded data, or the user's folder: a mistyped data.root is told before any weights are looked for
    found = (embedded_spec(str(data["embedded"]), kind) if data.get("root") is None
             else check_root(Path(str(data["root"])).expanduser(), kind))
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
    model = {**model, "backbone": choice.backbone, "in_chans": fmt.in_chans, "weights": weights}
    data = {**data, "image_size": fmt.image_size, "interpolation": fmt.interpolation,
            "mean": list(fmt.mean), "std": list(fmt.std)}
    config = {**config, "model": model, "data": data}
    task = dict(config["task"])
    augment = config.get("augment") or {}
    seed = int(config["seed"])
    return RunSpec(
        command=command, seed=seed, recipe=config.get("recipe"),
        task=TaskSpec(str(task.pop("kind")), task),
        model=ModelSpec(choice.backbone, source, fmt, model),
        data=DataSpec(kind, seed, AugmentSpec(**augment), data),
        finetune=FinetuneSpec(dict(config.get("finetune") or {})),
        optimizer=dict(config.get("optimizer") or {}), scheduler=dict(config.get("scheduler") or {}),
        trainer=TrainerSpec(dict(config.get("trainer") or {})),
        callbacks=CallbacksSpec(
            early_stopping=dict(config.get("early_stopping") or {}),
            checkpoint_every_minutes=(config.get("checkpoint") or {}).get("every_minutes"),
            regularization=config.get("regularization"), ema=dict(config.get("ema") or {}),
            swa=dict(config.get("swa") or {}), report=dict(config.get("report") or {"enabled": True})),
        outputs=OutputSpec(config.get("run_dir"), config.get("resume"), config.get("ckpt_path")),
        lr_find=dict(config.get("lr_find") or {}), advise=dict(config.get("advise") or {}),
        notes=(choice.why, *warnings), config=config)


def plan_training(spec: RunSpec, datamodule) -> RunSpec:
    """Resolve the fine-tuning plan, the feature cache and the solved head on the scanned data."""
    check_device_decode(spec.data.get("decode", "cpu"), spec.finetune.options)
    check_optimizer_group(spec.optimizer, wants_search(spec.optimizer))
    notes = list(spec.notes)
    finetune, advice, race = plan_finetune(spec, datamodule, notes)
    cache = plan_cache(spec, finetune)
    finetune, trainer = plan_head(spec, finetune, notes)
    finetune = {**finetune, "cache_features": cache["used"]}
    flags = {**spec.trainer.flags, **trainer}
    return replace(spec, finetune=FinetuneSpec(finetune, race, cache, advice), trainer=TrainerSpec(flags),
                   notes=tuple(notes), config={**spec.config, "finetune": finetune, "trainer": flags})


def search_lr(spec: RunSpec, datamodule) -> RunSpec:
    """`optimizer.lr=find`: Lightning's LR range test on the planned run; the spec then trains with its
    suggestion (config.yaml records the number). The random streams are left as they were."""
    check_searchable(spec, "fit")
    with preserved_rng():
        search = find_lr(spec, datamodule)
    optimizer = {**spec.optimizer, "lr": search.suggestion}
    note = f"optimizer.lr=find: trains with the suggested base LR {search.suggestion:.3g}"
    return replace(spec, optimizer=optimizer, lr_search=asdict(search), notes=(*spec.notes, note),
                   config={**spec.config, "optimizer": optimizer})


def check_ckpt_path(ckpt_path, resume) -> None:
    if ckpt_path is not None and str(ckpt_path) in LIGHTNING_CKPT_NAMES and not resume:
        raise ConfigError(f"ckpt_path={ckpt_path!r} would have Lightning look for that checkpoint in this new run "
                          "directory and silently start afresh; to continue a run use resume=last (the newest "
                          "run under outputs/) or resume=<run directory>.")


def plan_run(cfg: DictConfig, command: str) -> tuple[RunSpec, object]:
    """Plan a training run and scan its data: the final spec and the scanned datamodule."""
    check_ckpt_path(cfg.get("ckpt_path"), cfg.get("resume"))
    if cfg.get("ckpt_path"):  # Lightning resumes from it later: refuse a file that would run code now
        read_checkpoint(require(cfg.ckpt_path, "ckpt_path", "a checkpoint to resume from"))
    pl.seed_everything(cfg.seed, workers=True, verbose=False)
    spec = plan_spec(cfg, command)
    datamodule = build_datamodule(spec.data, spec.model.input.in_chans)
    datamodule.scan()
    spec = plan_training(spec, datamodule)
    if wants_search(spec.optimizer):
        spec = search_lr(spec, datamodule)
    return spec, datamodule
