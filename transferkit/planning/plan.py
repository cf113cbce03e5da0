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

from transferkit.errors import ConfigError
from transferkit.evaluation.reports.run_report import report_options
from transferkit.planning.balance import plan_balance
from transferkit.planning.finetune import check_device_decode, plan_cache, plan_finetune, plan_head
from transferkit.planning.model import plan_model
from transferkit.planning.multilabel import plan_label_kind
from transferkit.planning.spec import (AugmentSpec, CallbacksSpec, DataSpec, FinetuneSpec, ModelSpec, OutputSpec,
                                       RunSpec, TaskSpec, TrainerSpec)
from transferkit.runtime.rng_state import preserved_rng
from transferkit.tasks.calibration import check_calibration
from transferkit.search.lr_finder import check_searchable, find_lr, wants_search
from transferkit.tasks.loading import read_checkpoint, require
from transferkit.tasks.optim import check_optimizer_group
from transferkit.training.builders import build_datamodule

log = logging.getLogger("transferkit")

LIGHTNING_CKPT_NAMES = ("last", "best", "hpc", "registry")  # names trainer.fit(ckpt_path=...) looks up


class RunPlan:
    """A planned run: `spec`, the final `RunSpec`, and `datamodule`, its data scanned (with `scan`).

    The config stops here: it is read once, into the spec; everything after planning receives the spec.
    With `load_weights`, weights that cannot be had (not cached, hub unreachable) stop the run here;
    with `train`, fine-tuning is planned too (the race, the feature cache, the solved head, `lr=find`).
    """

    def __init__(self, cfg: DictConfig, command: str, *, load_weights: bool = True, scan: bool = True,
                 train: bool = True) -> None:
        if train:
            check_ckpt_path(cfg.get("ckpt_path"), cfg.get("resume"))
            if cfg.get("ckpt_path"):  # Lightning resumes from it later: refuse a file that would run code now
                read_checkpoint(require(cfg.ckpt_path, "ckpt_path", "a checkpoint to resume from"))
            pl.seed_everything(cfg.seed, workers=True, verbose=False)
        config = OmegaConf.to_container(cfg, resolve=True)
        config["data"] = manifest_root(config["data"])
        model = plan_model(config["model"], config["data"], str(config["task"]["kind"]), load_weights)
        spec = assemble_spec(config, command, ModelSpec(model.choice.backbone, model.source, model.input,
                                                        model.options), model.data, model.notes)
        self.spec, self.datamodule = spec, None
        if scan:
            self.datamodule = build_datamodule(spec.data, spec.model.input.in_chans)
            self.datamodule.scan()
            self.spec = spec = plan_label_kind(spec, self.datamodule)
        if train:
            self.spec = plan_training(spec, self.datamodule)
            if wants_search(self.spec.optimizer):
                self.spec = search_lr(self.spec, self.datamodule)


def manifest_root(data: dict) -> dict:
    """`data.manifest=<csv>` without `data.root`: the manifest's folder is the root its paths are relative
    to (said in the log), not the embedded data set it would otherwise silently train on."""
    manifest = data.get("manifest")
    if manifest in (None, "") or data.get("root") is not None or "://" in str(manifest):
        return data
    root = str(Path(str(manifest)).expanduser().resolve().parent)
    log.info("data.manifest=%r without data.root: data.root=%r (the manifest's folder; its paths are relative "
             "to data.root)", str(manifest), root)
    return {**data, "root": root}


def assemble_spec(config: dict, command: str, model: ModelSpec, data: dict, notes: tuple[str, ...] = ()) -> RunSpec:
    """The spec of a composed config (a plain dict) whose model (`model.options`) and data group (`data`)
    are resolved; config.yaml gets those resolved groups."""
    task, augment = dict(config["task"]), config.get("augment") or {}
    if config.get("logit_adjust"):
        task["logit_adjust"] = True
    callbacks = config.get("checkpoint") or {}
    return RunSpec(
        command=command, seed=int(config["seed"]), recipe=config.get("recipe"),
        task=TaskSpec(str(task.pop("kind")), task), model=model,
        data=DataSpec(str(config["task"]["kind"]), int(config["seed"]), AugmentSpec(**augment), data),
        finetune=FinetuneSpec(dict(config.get("finetune") or {})),
        optimizer=dict(config.get("optimizer") or {}), scheduler=dict(config.get("scheduler") or {}),
        trainer=TrainerSpec(dict(config.get("trainer") or {})),
        callbacks=CallbacksSpec(
            early_stopping=dict(config.get("early_stopping") or {}),
            checkpoint_every_minutes=callbacks.get("every_minutes"),
            checkpoint_every_steps=callbacks.get("every_steps"),
            regularization=config.get("regularization"), ema=dict(config.get("ema") or {}),
            swa=dict(config.get("swa") or {}), report=report_options(config.get("report")),
            monitor=callbacks.get("monitor")),
        outputs=OutputSpec(config.get("run_dir"), config.get("resume"), config.get("ckpt_path")),
        lr_find=dict(config.get("lr_find") or {}), advise=dict(config.get("advise") or {}),
        calibration=check_calibration(config.get("calibration"), str(config["task"]["kind"])),
        notes=tuple(notes), config={**config, "model": model.options, "data": data})


def plan_spec(cfg: DictConfig, command: str, *, load_weights: bool = True) -> RunSpec:
    """The composed config as a spec, with the model, its weights and the input format resolved (no data read)."""
    return RunPlan(cfg, command, load_weights=load_weights, scan=False, train=False).spec


def plan_training(spec: RunSpec, datamodule) -> RunSpec:
    """Resolve the fine-tuning plan, the feature cache and the solved head on the scanned data."""
    check_device_decode(spec.data.get("decode", "cpu"), spec.finetune.options)
    check_optimizer_group(spec.optimizer, wants_search(spec.optimizer))
    notes = list(spec.notes)
    spec = plan_balance(spec, datamodule, notes)
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
    plan = RunPlan(cfg, command)
    return plan.spec, plan.datamodule
