"""The fine-tuning decisions: `finetune=auto`'s race, the feature cache, the solved head."""

from __future__ import annotations

import json
import logging
from pathlib import Path

from transferkit.errors import ConfigError
from transferkit.evaluation.measure import measure_datamodule
from transferkit.data.feature_cache import cache_blockers, choose_feature_cache
from transferkit.planning.model import AUTO
from transferkit.planning.spec import SOLVED_HEAD_TRAINER, RunSpec
from transferkit.runtime.rng_state import preserved_rng
from transferkit.tasks.finetune import FinetunePlan
from transferkit.planning.race import describe, plan_from_record, plan_race
from transferkit.training.race.rules import RACE_PROGRESS, RacePlan

log = logging.getLogger("transferkit")

TRAINS_ON_FEATURES = ("freeze", "partial")  # strategies that keep (some) backbone features fixed


def plan_finetune(spec: RunSpec, datamodule, notes: list[str]) -> tuple[dict, dict | None, RacePlan | None]:
    """The `finetune` group to train with, the advice record when `auto` measured the data, and the race."""
    finetune, kind = dict(spec.finetune.options), spec.task.kind
    strategy = finetune.get("strategy")
    if strategy == AUTO and kind not in ("classification", "multilabel"):
        raise ConfigError(f"finetune=auto measures classification data; with task.kind={kind!r} "
                          "choose finetune=freeze|partial|full.")
    if spec.model.weights.kind == "none":
        if strategy == AUTO:
            note = "finetune=auto with model.weights=none: training from scratch (strategy full)"
            log.info("%s", note)
            notes.append(note)
            return {**finetune, "strategy": "full", "backbone_lr_scale": 1.0}, None, None
        if strategy in TRAINS_ON_FEATURES:
            raise ConfigError(
                f"finetune.strategy={strategy!r} with model.weights=none would train on random frozen "
                "features. Use pretrained weights (model.weights=auto, charnet or a file), or train from "
                "scratch with finetune=full.")
    if strategy != AUTO:
        return finetune, None, None
    averaging = [f"{key}={value!r}" for key, value in (("ema.decay", spec.callbacks.ema.get("decay")),
                                                       ("swa.epoch_start", spec.callbacks.swa.get("epoch_start")))
                 if value is not None]
    if averaging:
        raise ConfigError(f"{', '.join(averaging)} with finetune=auto: the race trains its candidates in legs, "
                          "which weight averaging does not follow yet. Choose finetune=freeze|partial|full, or "
                          "set ema.decay=null and swa.epoch_start=null.")
    recorded = recorded_race(spec.outputs.resume)
    if recorded is not None:  # `fit resume=` of a race stopped mid-way: the race it planned, as it was
        advice, race = recorded.get("advice"), plan_from_record(finetune, recorded["plan"])
    elif kind == "multilabel":  # k-NN similarity and LogME score one label per image: no measurement
        advice, race = None, plan_race(finetune, None, spec.trainer.max_epochs)
        note = ("finetune=auto on task=multilabel: the candidates race on val/map; the data is not measured "
                "(k-NN similarity and LogME score single labels), so scratch is not ruled out")
        log.info("%s", note)
        notes.append(note)
    else:
        with preserved_rng():  # measuring must not change training's random stream
            advice = measure_datamodule(spec, datamodule, quick=True).to_dict()
        race = plan_race(finetune, advice, spec.trainer.max_epochs)
    log.info("finetune=auto: %s", describe(race))
    return finetune, advice, race


def recorded_race(resume: str | None) -> dict | None:
    """The race/progress.json of the run being resumed, if it stopped mid-race."""
    if not resume:
        return None
    path = Path(str(resume)) / RACE_PROGRESS
    return json.loads(path.read_text()) if path.is_file() else None


def plan_cache(spec: RunSpec, finetune: dict) -> dict:
    """Whether to train the head on cached backbone features (finetune.cache_features), and why."""
    if finetune.get("strategy") == AUTO:
        return {"used": False, "requested": finetune.get("cache_features"),
                "reasons": ["finetune=auto: decided per race candidate (freeze trains on cached features)"]}
    model, augment = spec.model.options, spec.data.augment
    blockers = cache_blockers(spec.task.kind, finetune.get("strategy"), finetune.get("unfreeze_at_epoch"),
                              augment.name, augment.mixup_alpha, augment.cutmix_alpha, model.get("drop_rate", 0.0),
                              model.get("drop_path_rate", 0.0), model.get("spatial_dropout", 0.0),
                              str(spec.data.get("decode", "cpu")))
    requested = finetune.get("cache_features")
    wasteful = "trainer.fast_dev_run reads only a batch or two" if spec.trainer.get("fast_dev_run") else None
    use = choose_feature_cache(requested, blockers, wasteful)
    why = blockers or ([wasteful] if wasteful and requested is None else [])
    if not use:
        log.info("Feature cache off (finetune.cache_features=%r)%s", requested, ": " + "; ".join(why) if why else "")
    return {"used": use, "requested": requested, "reasons": why}


def plan_head(spec: RunSpec, finetune: dict, notes: list[str]) -> tuple[dict, dict]:
    """`finetune.head_solver` and `finetune.lpft` (tasks/linear_probe.py): the finetune group, and the
    trainer keys they decide.

    With strategy freeze and head_solver lbfgs the head is solved once before the first epoch, so one
    epoch (its validation, best.ckpt and last.ckpt) is all that is left: trainer.max_epochs=1.
    Segmentation has no linear head to solve: it trains its decoder by SGD (lpft=true is an error).
    """
    head, kind = FinetunePlan(**finetune), spec.task.kind
    if kind not in ("classification", "multilabel") and head.probes_first:
        if head.lpft:
            raise ConfigError(f"finetune.lpft=True needs a linear classifier head; task.kind={kind!r} "
                              "trains a decoder. Set finetune.lpft=false.")
        notes.append("finetune.head_solver=lbfgs applies to classification; segmentation uses sgd")
        return {**finetune, "head_solver": "sgd"}, {}
    if not head.solves_head:
        return finetune, {}
    trainer = {k: v for k, v in SOLVED_HEAD_TRAINER.items() if spec.trainer.get(k, v) != v}
    if trainer:
        note = "finetune.head_solver=lbfgs solves the head before training: " + ", ".join(
            f"trainer.{k} {spec.trainer.get(k)} -> {v}" for k, v in trainer.items()) + " (one epoch validates it)"
        log.info("%s", note)
        notes.append(note)
    return finetune, trainer


def check_device_decode(decode: str, finetune: dict) -> None:
    """`data.decode=gpu` batches exist only inside the training loop: nothing may read the dataset itself."""
    if str(decode) != "gpu":
        return
    if finetune.get("strategy") == AUTO or FinetunePlan(**finetune).probes_first:
        raise ConfigError("data.decode=gpu decodes inside the training loop, but finetune=auto, "
                          "finetune.head_solver=lbfgs and finetune.lpft=true read the images before it; "
                          "choose finetune=freeze|partial|full with finetune.head_solver=sgd, or data.decode=cpu.")
