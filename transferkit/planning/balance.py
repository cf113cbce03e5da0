"""Long-tailed classes: what planning decides from the scanned train split's class counts.

When the largest class of the train split holds more than `LONG_TAIL_RATIO` times the images of the
smallest, a model that never predicts the rare classes can still score high accuracy. Such a run then
changes its defaults: the loss is class-weighted (`data.balance=auto` -> `weights`; the solved head's
L-BFGS solve uses the same weights) and checkpoints (and `finetune=auto`'s race) select on balanced
accuracy (`val/balanced_acc`, the mean per-class recall). `data.balance=none|weights|sampler` and
`checkpoint.monitor=<metric>` set by hand win. The decision is recorded in the spec (the task's
`monitor` option, the data group's `balance`) and in results.json (`imbalance`).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace

import numpy as np

from transferkit.errors import ConfigError
from transferkit.planning.spec import RunSpec, TaskSpec
from transferkit.training.race.rules import METRICS as RACE_METRICS

log = logging.getLogger("transferkit")

LONG_TAIL_RATIO = 10.0      # largest / smallest train class above this: the long-tail defaults apply
BALANCED_MONITOR = "val/balanced_acc"
MONITORS = ("val/acc", "val/balanced_acc", "val/f1", "val/loss")  # classification's selectable metrics


@dataclass(frozen=True)
class Imbalance:
    """The train split's class counts and the decisions they led to."""

    ratio: float
    largest: str
    smallest: str
    long_tailed: bool
    balance: str
    monitor: str

    def to_dict(self) -> dict:
        return {"ratio": round(self.ratio, 2), "largest": self.largest, "smallest": self.smallest,
                "long_tailed": self.long_tailed, "threshold": LONG_TAIL_RATIO, "balance": self.balance,
                "monitor": self.monitor}


def imbalance_ratio(counts: np.ndarray) -> float:
    """Largest / smallest count among the classes that have images (1.0 when fewer than two do)."""
    present = counts[counts > 0]
    return float(present.max() / present.min()) if present.size >= 2 else 1.0


def choose_imbalance(counts: np.ndarray, class_names: list[str], balance: str, monitor: str | None) -> Imbalance:
    """The balance and selection metric of a classification run with these train `counts` (pure)."""
    ratio = imbalance_ratio(counts)
    long_tailed = ratio > LONG_TAIL_RATIO
    present = np.flatnonzero(counts > 0)
    largest = class_names[present[np.argmax(counts[present])]] if present.size else ""
    smallest = class_names[present[np.argmin(counts[present])]] if present.size else ""
    chosen_balance = balance if balance != "auto" else ("weights" if long_tailed else "none")
    chosen_monitor = monitor or (BALANCED_MONITOR if long_tailed else "val/acc")
    return Imbalance(ratio, largest, smallest, long_tailed, chosen_balance, chosen_monitor)


def check_monitor(monitor: str | None, kind: str) -> None:
    if monitor is None or kind != "classification":
        return
    if monitor not in MONITORS:
        raise ConfigError(f"checkpoint.monitor={monitor!r} is not a metric classification validates; "
                          f"use one of {list(MONITORS)} (null: val/balanced_acc on long-tailed data, else val/acc).")


def plan_balance(spec: RunSpec, datamodule, notes: list[str]) -> RunSpec:
    """The spec with `data.balance` resolved and the selection metric chosen from the train counts;
    the datamodule is told the balance it weights or samples with."""
    monitor = spec.callbacks.monitor
    check_monitor(monitor, spec.task.kind)
    if spec.task.options.get("logit_adjust") and spec.task.kind != "classification":
        raise ConfigError(f"logit_adjust=true adjusts a classifier's logits by its class priors; task.kind="
                          f"{spec.task.kind!r} has none. Set logit_adjust=false.")
    balance = str(spec.data.get("balance", "none"))
    scanned = "train" in (getattr(datamodule, "sources", None) or {})  # an unscanned datamodule: nothing to count
    if spec.task.kind != "classification" or not scanned:
        if monitor is None:
            return spec
        return replace(spec, task=TaskSpec(spec.task.kind, {**spec.task.options, "monitor": monitor}))
    counts = np.bincount(datamodule.labels("train"), minlength=len(datamodule.class_names))
    decided = choose_imbalance(counts, list(datamodule.class_names), balance, monitor)
    if decided.long_tailed:
        note = (f"long-tailed train split: {decided.largest!r} has {decided.ratio:.1f}x the images of "
                f"{decided.smallest!r} (> {LONG_TAIL_RATIO:g}); data.balance={decided.balance}, checkpoints "
                f"selected on {decided.monitor}; macro F1 and balanced accuracy are reported first")
        log.warning("%s", note)
        notes.append(note)
    if spec.finetune.strategy == "auto" and decided.monitor not in RACE_METRICS:
        raise ConfigError(f"checkpoint.monitor={decided.monitor!r}: finetune=auto's race scores candidates on "
                          f"{sorted(RACE_METRICS)}; choose one of them, or a fixed finetune=freeze|partial|full.")
    datamodule.use_balance(decided.balance)
    options = {**spec.task.options, "monitor": decided.monitor}
    if options.get("logit_adjust"):  # the train split's class priors, subtracted (as logs) at evaluation
        options["class_priors"] = (counts / counts.sum()).tolist()
    task = TaskSpec(spec.task.kind, options)
    data = spec.data.with_options(balance=decided.balance)
    config = {**spec.config, "data": {**spec.config.get("data", {}), "balance": decided.balance},
              "checkpoint": {**spec.config.get("checkpoint", {}), "monitor": decided.monitor}}
    return replace(spec, task=task, data=data, callbacks=replace(spec.callbacks, monitor=decided.monitor),
                   config=config, imbalance=decided.to_dict())


def check_fit_only(logit_adjust, command: str) -> None:
    """`logit_adjust` is decided at fit (the checkpoint keeps the train priors and applies them itself)."""
    if logit_adjust:
        raise ConfigError(f"logit_adjust={logit_adjust!r} is a fit option: the checkpoint records the train split's "
                          f"class priors and {command} applies them on its own when it was trained with "
                          "logit_adjust=true. Drop logit_adjust= here, or fit again with logit_adjust=true.")
