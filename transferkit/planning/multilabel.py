"""Multi-label runs: what planning decides once the data is scanned.

A manifest with label sets (`path,labels` or one-hot columns) makes the run `task=multilabel`, said in
the log; `task=multilabel` on data with one label per image is refused. Single-label options are
refused or switched off in one line each: `finetune=auto` with a `checkpoint.monitor` other than val/map
(its race scores multi-label candidates on val/map), `data.balance=weights|sampler` (BCE's per-class
positive weights balance rare labels),
`calibration=temperature` (a softmax temperature; skipped with a log line).
"""

from __future__ import annotations

import logging
from dataclasses import replace

from transferkit.errors import ConfigError
from transferkit.planning.spec import RunSpec, TaskSpec

log = logging.getLogger("transferkit")

MULTILABEL_MONITORS = ("val/map", "val/f1", "val/loss")
POS_WEIGHTS = ("auto", "none")  # task.pos_weight
SINGLE_LABEL_OPTIONS = ("label_smoothing",)  # task group keys a multi-label task does not take


def plan_label_kind(spec: RunSpec, datamodule) -> RunSpec:
    """The spec with `task.kind` matching the scanned labels, and multi-label's refusals applied."""
    found = getattr(datamodule, "label_kind", "classification")
    kind = spec.task.kind
    if kind == "multilabel" and found != "multilabel":
        raise ConfigError("task=multilabel reads label sets from data.manifest=<csv> with a path,labels header "
                          "(;-separated) or one-hot class columns (path,<class1>,<class2>,... with 0/1); this data "
                          "has one label per image. Give such a manifest, or use task=classification.")
    if found != "multilabel" or kind not in ("classification", "multilabel"):
        return spec
    notes = list(spec.notes)
    if kind == "classification":
        note = (f"data.manifest={spec.data.get('manifest')!r} holds label sets: task=multilabel (a sigmoid per "
                "class, BCE, checkpoints selected on val/map, thresholds tuned on val)")
        log.info("%s", note)
        notes.append(note)
    check_multilabel_options(spec)
    if spec.task.options.get("label_smoothing"):
        raise ConfigError(f"task.label_smoothing={spec.task.options['label_smoothing']!r} smooths one softmax "
                          "target; task=multilabel trains a sigmoid per class. Set task.label_smoothing=0.")
    options = {k: v for k, v in spec.task.options.items() if k not in SINGLE_LABEL_OPTIONS}
    config = {**spec.config, "task": {"kind": "multilabel", **options}, "calibration": "none"}
    if spec.calibration == "temperature" or spec.config.get("calibration") == "temperature":
        log.info("calibration=temperature fits a softmax temperature (single-label); a multi-label model's "
                 "per-class sigmoids are used as they are (calibration=none).")
    return replace(spec, task=TaskSpec("multilabel", options), calibration="none", notes=tuple(notes),
                   config=config)


def check_multilabel_options(spec: RunSpec) -> None:
    """One-line refusals for single-label options on a multi-label run."""
    monitor = spec.callbacks.monitor
    if spec.finetune.strategy == "auto" and monitor not in (None, "val/map"):
        raise ConfigError(f"checkpoint.monitor={monitor!r} with finetune=auto: the race scores multi-label "
                          "candidates on val/map (macro AP over validation images, with a bootstrap SE) and "
                          "cannot score them on another metric; set checkpoint.monitor=val/map (or null), or "
                          "choose finetune=freeze|partial|full.")
    balance = str(spec.data.get("balance", "none"))
    if balance in ("weights", "sampler"):
        raise ConfigError(f"data.balance={balance!r} weights single-label classes; task=multilabel already weights "
                          "each class's positives by negatives/positives in BCE. Use data.balance=auto or none.")
    if monitor is not None and monitor not in MULTILABEL_MONITORS:
        raise ConfigError(f"checkpoint.monitor={monitor!r} is not a metric task=multilabel validates; use one of "
                          f"{list(MULTILABEL_MONITORS)} (null: val/map).")
    if str(spec.task.options.get("pos_weight", "auto")) not in POS_WEIGHTS:
        raise ConfigError(f"task.pos_weight={spec.task.options['pos_weight']!r} is unknown; use one of "
                          f"{list(POS_WEIGHTS)} (auto: negatives/positives per class from the train split).")
    if spec.config.get("logit_adjust"):
        raise ConfigError("logit_adjust=true adjusts single-label class priors; task=multilabel has none. "
                          "Set logit_adjust=false.")
