"""Run the `finetune=auto` race planned by `transferkit.training.race.rules`: legs, cuts, the winner's finish.

Each candidate trains in `<run_dir>/race/<name>/`. A leg is one `trainer.fit` up to the rung's
epoch, resuming from the candidate's `last.ckpt`, so survivors continue where they stopped (the LR
schedule spans the full budget from the first leg). Eliminated candidates are released. The
winner's checkpoints become the run's `checkpoints/best.ckpt` and `last.ckpt`.
"""

from __future__ import annotations

import copy
import gc
import logging
import shutil
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytorch_lightning as pl
from pytorch_lightning.utilities import rank_zero_only

from transferkit.training.builders import build_feature_cache, build_task, build_trainer, load_task_weights
from transferkit.runtime.checkpoint_io import checkpoint_meta
from transferkit.training.race.progress import RaceProgress
from transferkit.training.race.record import adopt_winner, race_table
from transferkit.training.race.validation import ScoredEpochsOnly, ValidationRecorder, validated_epochs_callbacks
from transferkit.runtime.interval_checkpoint import newer_mid_epoch
from transferkit.runtime.rng_state import capture_global_rng, restore_global_rng
from transferkit.training.metrics_files import join_metrics, read_rows, set_aside_metrics
from transferkit.planning.spec import RunSpec
from transferkit.training.race.rules import (SCORED_EVALUATIONS, Candidate, Entry, Rung, Score, Verdict,
                                             choose_survivors, output_size, score_accuracies, score_outputs)
from transferkit.tasks.linear_probe import LinearProbeCallback, probe_report
from transferkit.data.feature_store import FeatureDataset
from transferkit.data.transforms import PER_IMAGE_STANDARDISED

log = logging.getLogger("transferkit")

__all__ = ["Leg", "ScoredEpochsOnly", "ValidationRecorder", "adopt_winner", "race_table", "run_race",
           "validated_epochs_callbacks"]


@dataclass
class Leg:
    """A candidate in the race: its config, task, data and what it has done so far."""

    candidate: Candidate
    spec: RunSpec
    task: pl.LightningModule
    data: pl.LightningDataModule
    directory: Path
    entry: Entry
    recorder: ValidationRecorder
    trainer: pl.Trainer | None = None
    legs_run: int = 0
    probe: dict | None = None  # what its linear probe solved (lbfgs freeze, LP-FT), in its first leg
    weights_report: object | None = None  # what its encoder loaded from the planned weights (LoadReport)
    rng: dict | None = None  # the random state right after its model was built, for its first leg

    @property
    def last_checkpoint(self) -> Path:
        return self.directory / "checkpoints" / "last.ckpt"

    def resume_checkpoint(self) -> Path | None:
        """Where its next leg continues from: last.ckpt, or a newer mid-epoch checkpoint."""
        return newer_mid_epoch(self.directory, self.last_checkpoint) or (
            self.last_checkpoint if self.last_checkpoint.is_file() else None)

    def ran(self, rung: Rung) -> bool:
        """Whether it already trained to this rung (in an earlier session of a resumed race)."""
        return any(r["epochs"] == rung.end for r in self.entry.rungs)


def start_leg(spec: RunSpec, candidate: Candidate, datamodule, run_dir: Path,
              pretrained: tuple[dict, object] | None = None) -> Leg:
    """Build the candidate's task (pretrained or random init) and the data it trains on.

    `pretrained` (see `pretrained_state`): the encoder state an earlier candidate loaded from
    `weights`, copied instead of reading the weights file again.
    """
    leg_spec, weights = spec.for_candidate(candidate), spec.model.weights
    # the race's schedule spans the run's max_epochs: each leg trains a part of it
    task = build_task(leg_spec, datamodule, None, schedule_epochs=spec.trainer.max_epochs)
    report = None
    if candidate.use_weights and pretrained is not None:  # the same random init draws as with weights
        task.encoder.load_state_dict(pretrained[0])
        report = pretrained[1]
    elif candidate.use_weights:
        report = load_task_weights(task, leg_spec, weights)
    directory = run_dir / "race" / candidate.name
    data = datamodule
    if candidate.augment is not None and getattr(datamodule, "augment", None) != candidate.augment:
        data = copy.copy(datamodule)  # same sources and splits, the candidate's augmentation
        data.augment = candidate.augment
    if leg_spec.finetune.strategy == "freeze" and leg_spec.task.kind in ("classification", "multilabel"):
        data = build_feature_cache(leg_spec, data, task, directory)
    entry = Entry(candidate.name, leg_spec.finetune.strategy)
    return Leg(candidate, leg_spec, task, data, directory, entry, ValidationRecorder(), weights_report=report)


def pretrained_state(leg: Leg) -> tuple[dict, object] | None:
    """A fresh pretrained candidate's encoder state and weights report, for the candidates built
    after it (the weights are read once per race). None when some encoder keys were not in the
    weights or did not fit (they keep each model's own random init: copying them would change it)."""
    report = leg.weights_report
    if not leg.candidate.use_weights or report is None or report.missing or report.mismatched:
        return None
    return {k: v.detach().clone() for k, v in leg.task.encoder.state_dict().items()}, report


def start_legs(spec: RunSpec, candidates: list[Candidate], datamodule, run_dir: Path) -> dict[str, Leg]:
    """Every candidate draws its random init and its first leg's shuffles and augmentations from
    the random state the race started with, as that plan trained alone at the same seed would: a
    candidate's result does not depend on which candidates were built or trained before it."""
    legs, pretrained, start = {}, None, capture_global_rng()
    for candidate in candidates:
        restore_global_rng(start)
        leg = start_leg(spec, candidate, datamodule, run_dir, pretrained)
        leg.rng = capture_global_rng()
        pretrained = pretrained or pretrained_state(leg)
        legs[candidate.name] = leg
    return legs


@dataclass(frozen=True)
class SharedProbe:
    """What the race's freeze candidate computed that the LP-FT candidates' probes reuse."""

    features: tuple   # (features, labels, origin): its cached training features
    solution: tuple | None = None  # (solver options, HeadSolution): the head it solved on them


def shared_features(leg: Leg) -> SharedProbe | None:
    """The freeze candidate's cached training features, for the LP-FT candidates' probes: the same
    pretrained encoder and, with augment=none, the eval transform's resize and normalisation. With
    them the head it solved: the LP-FT probes would solve the same problem again."""
    dataset = getattr(getattr(leg.trainer, "train_dataloader", None), "dataset", None)
    if not isinstance(dataset, FeatureDataset) or leg.spec.data.augment.name in PER_IMAGE_STANDARDISED:
        return None
    solved = [cb.solution for cb in leg.trainer.callbacks if isinstance(cb, LinearProbeCallback)]
    return SharedProbe((dataset.features, dataset.labels, "feature cache (shared with the race's freeze candidate)"),
                       solved[0] if solved else None)


def train_leg(leg: Leg, rung: Rung, shared: SharedProbe | None = None) -> None:
    """Train `leg` up to `rung.end` epochs of its schedule, continuing from its last checkpoint.

    A head solved by L-BFGS (freeze) is final after its one epoch: later rungs keep its score.
    See `leg_trainer` for when it writes last.ckpt and validates.
    """
    if leg.legs_run and leg.task.plan.solves_head:
        leg.entry.rungs.append({k: v for k, v in leg.entry.rungs[-1].items() if k != "verdict"} | {"epochs": rung.end})
        return
    log.info("race: %s trains to epoch %d", leg.candidate.name, rung.end)
    trainer = leg_trainer(leg, rung)
    for callback in trainer.callbacks:
        if isinstance(callback, LinearProbeCallback) and leg.candidate.use_weights and shared is not None:
            callback.given, callback.given_solution = shared.features, shared.solution
    resume = leg.resume_checkpoint()
    if resume is None and leg.rng is not None:  # a later leg's random state comes from its checkpoint
        restore_global_rng(leg.rng)
    start = time.time()
    with kept_leg_logs(leg, checkpoint_meta(resume)["global_step"] if resume else None, trainer):
        trainer.fit(leg.task, datamodule=leg.data, ckpt_path=resume, weights_only=True)
    leg.entry.seconds += time.time() - start
    leg.trainer, leg.legs_run = trainer, leg.legs_run + 1
    leg.probe = leg.probe or probe_report(trainer)
    recorder = leg.recorder
    if not recorder.losses:
        raise ValueError("a race leg produced no validation loss (is the val split empty?)")
    record = {"epochs": rung.end, "val_loss": recorder.losses[-1], "val_acc": recorder.accs[-1],
              "outputs": recorder.outputs[-SCORED_EVALUATIONS:], "accs": recorder.accs[-SCORED_EVALUATIONS:]}
    if recorder.maps:  # multi-label: val/map names what it is scored on (val/acc does not exist)
        record = {k: v for k, v in record.items() if k not in ("val_acc", "accs")} | {
            "val_map": recorder.maps[-1], "maps": recorder.maps[-SCORED_EVALUATIONS:]}
    score = entry_score(record, leg.task.monitor, output_size(record["outputs"][-1]) if record["outputs"] else 0)
    leg.entry.rungs.append({**record, "score": round(score.value, 4), "se": round(score.se, 4)})


def entry_score(record: dict, monitor: str, val_size: int) -> Score:
    """A rung record's score: the run's metric on its scored predictions (bootstrap SE), or without
    per-image predictions the mean accuracy of its scored validations (binomial SE)."""
    if record.get("outputs"):
        return score_outputs(record["outputs"], monitor)
    return score_accuracies(record.get("accs") or [record["score_acc"]], val_size)  # score_acc: a race recorded
    # before per-image scores (an older transferkit) resumes with its accuracies


@contextmanager
def kept_leg_logs(leg: Leg, step: int | None, trainer: pl.Trainer) -> Iterator[None]:
    """A leg cut short in an earlier session logs into the same folder, whose metrics.csv Lightning's
    logger would delete: its rows before `step` wait aside and are joined with the new ones after.

    The trainer goes on logging into the joined file (the winner's test): its CSV writer learns the
    file's columns, or its next new column would rewrite the file with only its own and fail on the
    earlier rows' (a race resumed after its winner had finished: issue 23)."""
    logs = leg.directory / "logs" / f"leg{leg.legs_run}"
    keep = step is not None and (logs / "metrics.csv").is_file() and rank_zero_only.rank == 0
    if keep:
        set_aside_metrics(logs, step)
    try:
        yield
    finally:
        if keep:
            join_metrics(logs)
            learn_columns(trainer, logs / "metrics.csv")


def learn_columns(trainer: pl.Trainer, path: Path) -> None:
    """The trainer's CSV writer (Lightning's `_ExperimentWriter.metrics_keys`) takes the columns of the
    metrics file it appends to."""
    writer = getattr(getattr(trainer, "logger", None), "experiment", None)
    keys = getattr(writer, "metrics_keys", None)
    if isinstance(keys, list) and path.is_file():
        keys[:] = sorted(set(keys) | set(read_rows(path)[0]))


def leg_trainer(leg: Leg, rung: Rung) -> pl.Trainer:
    """The leg's trainer. A leg that stops before the schedule's end writes last.ckpt once, at its
    end (of its epochs only `end` is a multiple of `end`), and validates only its scored epochs;
    the finishing leg writes last.ckpt and validates after every epoch, as a fixed run does."""
    end = 1 if leg.task.plan.solves_head else rung.end
    final = end >= int(leg.task.schedule_epochs)
    return build_trainer(leg.spec, leg.directory, leg.task.monitor, leg.task.monitor_mode,
                         extra_callbacks=[leg.recorder, *validated_epochs_callbacks(leg.spec, end, int(leg.task.schedule_epochs))],
                         log_version=f"logs/leg{leg.legs_run}",
                         flags_override={"max_epochs": end, "enable_model_summary": False},
                         last_every_n_epochs=1 if final else end)


def reattach(leg: Leg, rung: Rung) -> None:
    """A winner that finished its last leg in an earlier session: a trainer restored from its last
    checkpoint (a fit with nothing left to train), for the test and the adoption that follow."""
    leg.legs_run -= 1  # the same leg, its logs in the same folder
    trainer = leg_trainer(leg, rung)
    with kept_leg_logs(leg, sys.maxsize, trainer):
        trainer.fit(leg.task, datamodule=leg.data, ckpt_path=leg.resume_checkpoint(), weights_only=True)
    leg.trainer, leg.legs_run = trainer, leg.legs_run + 1


def release(leg: Leg, keep_checkpoints: bool = False) -> None:
    """Free what an eliminated candidate holds: its model, optimizer state, cached features and
    checkpoints on disk (its logs stay in `race/<name>/logs`). `cut` collects the garbage once.
    `keep_checkpoints`: a finisher the run's ensemble takes (finetune.combine=ensemble) keeps them."""
    store = getattr(leg.data, "store", None)
    if store is not None:
        store.release()
    leg.task = leg.trainer = leg.data = None  # type: ignore[assignment]
    if rank_zero_only.rank == 0 and not keep_checkpoints:
        shutil.rmtree(leg.directory / "checkpoints", ignore_errors=True)


def agree(trainer: pl.Trainer | None, names: list[str]) -> list[str]:
    """Under DDP every rank takes rank 0's survivors (they already agree: val metrics are synced).
    Without a trainer (a resumed race whose legs all ran before) every rank read the same record."""
    return names if trainer is None else list(trainer.strategy.broadcast(names, src=0))


def cut(legs: dict[str, Leg], among: dict[str, Leg], rung: Rung, keep: int, val_size: int,
        monitor: str = "val/acc", keep_checkpoints: bool = False) -> list[Verdict]:
    """Keep the best `keep` of `among` (see rules.choose_survivors); release the others (with
    `keep_checkpoints`, all but their checkpoints). Each candidate's last rung record gets its
    verdict (kept or cut, and why)."""
    scores = {name: entry_score(leg.entry.rungs[-1], monitor, val_size) for name, leg in among.items()}
    trainer = next((leg.trainer for leg in among.values() if leg.trainer is not None), None)
    verdicts = choose_survivors(scores, keep)
    kept = agree(trainer, [v.name for v in verdicts if v.kept])
    for verdict in verdicts:
        among[verdict.name].entry.rungs[-1]["verdict"] = verdict.to_dict()
        log.info("race: epoch %d, %s %s %.3f ± %.3f: %s", rung.end, monitor, verdict.name, verdict.value,
                 verdict.se, verdict.why)
    for name in [n for n in among if n not in kept]:
        release(legs.pop(name), keep_checkpoints)
    gc.collect()  # once per cut, not per candidate: a full collection is not free
    return verdicts


def run_race(spec: RunSpec, candidates: list[Candidate], rungs: list[Rung], datamodule, run_dir: Path,
             progress: RaceProgress | None = None, keep_finishers: bool = False) -> tuple[Leg, list[Entry]]:
    """Successive halving: returns the winner's leg (trained to the end) and every candidate's record.

    With `progress` the race is recorded after every leg and cut; a resumed race (its `previous`
    record) starts only the candidates still in, and skips the legs they already ran. With
    `keep_finishers` the candidates that finished keep their checkpoints (the run's ensemble)."""
    legs = start_legs(spec, [c for c in candidates if progress is None or progress.still_in(c.name)],
                      datamodule, run_dir)
    for leg in legs.values():
        if progress is not None:
            progress.restore(leg)
    entries = [legs[c.name].entry if c.name in legs else progress.entry(c.name) for c in candidates]
    record = (lambda: progress.save(legs, entries)) if progress is not None else (lambda: None)
    record()
    shared = None
    val_size = len(datamodule.sources["val"]) if hasattr(datamodule, "sources") else 0
    monitor = next(iter(legs.values())).task.monitor
    for rung in rungs:
        for leg in legs.values():
            if not leg.ran(rung):
                train_leg(leg, rung, shared)
                record()
            shared = shared or shared_features(leg)
        paying = {name: leg for name, leg in legs.items() if not leg.candidate.free}
        if len(paying) > rung.keep:
            cut(legs, paying, rung, rung.keep, val_size, monitor)
            record()
    if len(legs) > 1:  # the finisher meets the candidates too cheap to cut (freeze)
        cut(legs, legs, rungs[-1], 1, val_size, monitor, keep_checkpoints=keep_finishers)
        record()
    winner = next(iter(legs.values()))
    if winner.trainer is None:
        reattach(winner, rungs[-1])
    log.info("race: rank %d winner %s", winner.trainer.global_rank, winner.candidate.name)
    return winner, entries
