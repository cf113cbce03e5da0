"""Turn config groups into objects: datamodule, task, trainer. Only commands call these."""

from __future__ import annotations

import inspect
import logging
from pathlib import Path

import pytorch_lightning as pl
from pytorch_lightning.utilities.exceptions import MisconfigurationException

from transferkit.config.files import trainer_flags
from transferkit.data.transforms import trains_with_flips
from transferkit.errors import ConfigError, construct, did_you_mean, lookup
from transferkit.tasks.finetune import FinetunePlan
from transferkit.tasks.loading import task_classes
from transferkit.models.weight_loading import load_weights
from transferkit.models.weights import WeightsSource
from transferkit.planning.spec import DataSpec, RunSpec
from transferkit.runtime.preflight import PreflightCheck
from transferkit.runtime.format import FORMAT_KEY, FORMAT_VERSION, SPEC_KEY
from transferkit.data.datamodule import ClassificationDataModule
from transferkit.data.segmentation import SegmentationDataModule
from transferkit.data.feature_cache import FeatureCacheDataModule
from transferkit.data.feature_store import FeatureStore
from transferkit.runtime.interval_checkpoint import IntervalCheckpoint
from transferkit.tasks.linear_probe import LinearProbeCallback
from transferkit.training.averaging import build_averaging_callbacks
from transferkit.evaluation.reports.test_outputs import TestOutputsCallback
from transferkit.evaluation.reports.seg_grid import GRID_SAMPLES, SegmentationGridCallback
from transferkit.runtime.rng_state import RngStateCallback
from transferkit.runtime.guards import FiniteLossGuard, SignalCheckpoint
from transferkit.runtime.checkpoint_io import AtomicCheckpointIO
from transferkit.runtime.checkpoint_state import RunCheckpoint
from transferkit.runtime.run_paths import portable
from transferkit.training.console import is_interactive, progress_callbacks

log = logging.getLogger(__name__)


def build_datamodule(data: DataSpec, in_chans: int) -> pl.LightningDataModule:
    """The datamodule of a planned data spec (input format resolved)."""
    cls = SegmentationDataModule if data.task == "segmentation" else ClassificationDataModule
    return construct(cls, data.datamodule_kwargs(in_chans), "data")


def data_config(spec: RunSpec) -> dict:
    """The input format a task records, so predict/export prepare images exactly as training did."""
    # The segmentation datamodule flips whenever its pipeline does; classification obeys augment.flips.
    augment, fmt = spec.data.augment, spec.model.input
    flips = spec.task.kind == "segmentation" or augment.flips
    return {"image_size": fmt.image_size, "in_chans": fmt.in_chans, "mean": list(fmt.mean), "std": list(fmt.std),
            "interpolation": fmt.interpolation, "augment": augment.name,
            "flips": trains_with_flips(augment.name, flips)}


def build_task(spec: RunSpec, datamodule, weights: WeightsSource | None = None,
               schedule_epochs: int | None = None):
    """Build the task for `spec.task.kind`; with `weights`, initialise its backbone from them.
    `schedule_epochs`: the epochs its LR schedule spans when a fit trains only a part of it (a race leg)."""
    cls = lookup(task_classes(), spec.task.kind, "task.kind")
    kwargs = {
        **spec.task.options,
        "num_classes": len(datamodule.class_names),
        "class_names": list(datamodule.class_names),
        "model": dict(spec.model.options),
        "finetune": dict(spec.finetune.options),
        "optimizer": dict(spec.optimizer),
        "scheduler": dict(spec.scheduler),
        "data_config": data_config(spec),
    }
    if spec.callbacks.regularization is not None:
        kwargs["regularization"] = dict(spec.callbacks.regularization)
    params = inspect.signature(cls).parameters
    augment = spec.data.augment
    for key in ("mixup_alpha", "cutmix_alpha"):
        if key in params:
            kwargs[key] = getattr(augment, key)
    if schedule_epochs is not None:
        kwargs["schedule_epochs"] = int(schedule_epochs)
    if "class_weights" in params and hasattr(datamodule, "class_weights"):
        kwargs["class_weights"] = datamodule.class_weights()
    if "pos_weight" in params and hasattr(datamodule, "positive_weights"):  # task.pos_weight: auto | none
        kwargs["pos_weight"] = datamodule.positive_weights() if kwargs.get("pos_weight", "auto") == "auto" else None
    task = construct(cls, kwargs, "task")
    if weights is not None:
        load_task_weights(task, spec, weights)
    return task


def load_task_weights(task, spec: RunSpec, weights: WeightsSource):
    """Initialise the task's backbone from `weights`; returns what was loaded (`LoadReport`)."""
    fmt = spec.model.input
    return load_weights(task.encoder, weights, backbone_name=spec.model.backbone, in_chans=fmt.in_chans,
                        image_size=fmt.image_size, cache_dir=spec.model.cache_dir)


def build_feature_cache(spec: RunSpec, datamodule, task, run_dir: Path):
    """Serve the frozen backbone's features once per split instead of images (data.feature_cache)."""
    cache_dir = spec.data.get("cache_dir")
    store = FeatureStore(cache_dir=Path(cache_dir) / "features" if cache_dir else None,
                         spill_dir=run_dir / "feature_cache")
    return FeatureCacheDataModule(datamodule, task.encoder, spec.model.backbone,
                                  image_size=spec.model.input.image_size, in_chans=spec.model.input.in_chans,
                                  store=store, prepare_input=task.prepare_input)


def build_callbacks(spec: RunSpec, run_dir: Path, monitor: str, mode: str,
                    last_every_n_epochs: int = 1) -> list[pl.Callback]:
    from pytorch_lightning.callbacks import EarlyStopping, LearningRateMonitor

    checkpoint = RunCheckpoint(dirpath=run_dir / "checkpoints", filename="best", monitor=monitor,
                                 mode=mode, save_last=False, auto_insert_metric_name=False,
                                 enable_version_counter=False)
    # save_last=True would refresh last.ckpt only when best.ckpt is saved (Lightning 2.6), so a
    # resume from last.ckpt could lose epochs; this one is overwritten after every epoch (or every
    # `last_every_n_epochs`: a finetune=auto race leg writes it once, where the next leg resumes).
    last = LastCheckpoint(dirpath=run_dir / "checkpoints", filename="last", monitor=None, save_top_k=1,
                          auto_insert_metric_name=False, enable_version_counter=False,
                          every_n_epochs=last_every_n_epochs)
    callbacks: list[pl.Callback] = [checkpoint, last, FormatRecord(portable(spec.to_dict(), run_dir))]
    callbacks += run_guard_callbacks(run_dir / "checkpoints")
    every_minutes, every_steps = spec.callbacks.checkpoint_every_minutes, spec.callbacks.checkpoint_every_steps
    if every_minutes is not None or every_steps is not None:
        steps = {"every_steps": every_steps} if every_steps is not None else {}
        callbacks.append(IntervalCheckpoint(run_dir / "checkpoints", every_minutes, **steps))
    stopping = spec.callbacks.early_stopping
    if stopping.get("patience"):
        callbacks.append(EarlyStopping(monitor=stopping.get("monitor") or monitor, mode=mode,
                                       patience=stopping["patience"], min_delta=stopping.get("min_delta", 0.0)))
    if spec.task.kind in ("classification", "multilabel") and FinetunePlan(**spec.finetune.options).probes_first:
        callbacks.append(LinearProbeCallback(seed=spec.seed))  # finetune.head_solver=lbfgs or lpft

    # After the linear probe: an average starts from the solved head.
    callbacks += build_averaging_callbacks(dict(spec.callbacks.ema), dict(spec.callbacks.swa))
    callbacks.append(LearningRateMonitor(logging_interval="epoch"))  # after swa.lr is set for the epoch
    if spec.callbacks.report_enabled:
        callbacks.append(TestOutputsCallback())  # the test pass's outputs, for report.html
    if spec.task.kind == "segmentation":
        samples = spec.task.options.get("grid_samples", GRID_SAMPLES)
        callbacks.append(SegmentationGridCallback(run_dir, samples=samples))
    return callbacks


class LastCheckpoint(RunCheckpoint):
    """last.ckpt: its saved state does not depend on how often it saves (`every_n_epochs`), so a
    race leg that writes it only at its end resumes the state the previous leg saved."""

    @property
    def state_key(self) -> str:  # the plain every-epoch ModelCheckpoint's key, as in any run's last.ckpt
        options = {"monitor": self.monitor, "mode": self.mode, "every_n_train_steps": 0, "every_n_epochs": 1,
                   "train_time_interval": None}
        return f"ModelCheckpoint{options!r}"


def run_guard_callbacks(checkpoints: Path) -> list[pl.Callback]:
    """What lets a run stop and resume: the random state in every checkpoint, `last.ckpt` saved on
    SIGTERM/SIGINT, a stop at the first non-finite loss (see transferkit.runtime.guards), and, before
    training, room for the checkpoints (transferkit.runtime.preflight)."""
    return [RngStateCallback(), SignalCheckpoint(checkpoints), FiniteLossGuard(checkpoints),
            PreflightCheck(checkpoints)]


def build_plugins(flags: dict) -> list:
    """`trainer.plugins` plus atomic checkpoint writes in a background thread, unless a CheckpointIO
    was given.

    `AsyncCheckpointIO` copies the checkpoint's tensors in the training thread and writes them (atomically:
    `AtomicCheckpointIO`) in its own, so training goes on during the write and fsync. Lightning's teardown
    waits for the writes, so every checkpoint is complete on disk when `trainer.fit` returns or raises,
    before `results.json` is written and before `test` reads best.ckpt.
    """
    from lightning_fabric.plugins import CheckpointIO
    from pytorch_lightning.plugins.io import AsyncCheckpointIO


    given = flags.pop("plugins", None) or []
    plugins = list(given) if isinstance(given, (list, tuple)) else [given]
    if not any(isinstance(p, CheckpointIO) for p in plugins):
        plugins.append(AsyncCheckpointIO(AtomicCheckpointIO()))
    return plugins


def build_loggers(run_dir: Path, version: str = "") -> list:
    from pytorch_lightning.loggers import CSVLogger

    loggers = [CSVLogger(save_dir=str(run_dir), name="", version=version)]
    try:
        from pytorch_lightning.loggers import TensorBoardLogger
        from pytorch_lightning.loggers.tensorboard import _TENSORBOARD_AVAILABLE

        if _TENSORBOARD_AVAILABLE:
            loggers.append(TensorBoardLogger(save_dir=str(run_dir), name="tensorboard", version=version))
    except ImportError:
        pass
    return loggers


def build_trainer(spec: RunSpec, run_dir: Path, monitor: str, mode: str,
                  extra_callbacks: list | None = None, flags_override: dict | None = None,
                  log_version: str = "", last_every_n_epochs: int = 1) -> pl.Trainer:
    """The Trainer of `spec.trainer`; `flags_override` (e.g. a race leg's max_epochs), `log_version`
    (a sub-folder for its metrics) and `last_every_n_epochs` (last.ckpt only at the epochs it
    divides, e.g. a race leg's end) are for runs made of several fits."""
    flags = {**spec.trainer.flags, **(flags_override or {})}
    valid = trainer_flags()
    for key in flags:
        if key not in valid:
            raise ConfigError(f"trainer.{key} is not a Lightning Trainer flag.{did_you_mean(key, valid)}")
    for key in ("callbacks", "logger", "default_root_dir"):
        if key in flags:
            raise ConfigError(f"trainer.{key} is managed by transferkit (run_dir=..., early_stopping.*).")

    if flags.get("benchmark") is None and not flags.get("deterministic"):
        flags["benchmark"] = True  # one input size per run: let cuDNN pick its fastest algorithms (GPU only)
    progress, progress_flags = progress_callbacks(is_interactive(), flags.pop("enable_progress_bar", None))
    callbacks = build_callbacks(spec, run_dir, monitor, mode, last_every_n_epochs) + progress + list(extra_callbacks or [])
    plugins = build_plugins(flags)
    try:
        return pl.Trainer(**flags, **progress_flags, default_root_dir=str(run_dir), callbacks=callbacks,
                          logger=build_loggers(run_dir, log_version), plugins=plugins)
    except (MisconfigurationException, TypeError, ValueError) as err:  # a value Lightning refuses
        raise ConfigError(f"a trainer.* setting is refused by Lightning: {err}") from err


class FormatRecord(pl.Callback):
    """Writes the format version and the run's spec (plain values) into every checkpoint."""

    def __init__(self, spec: dict | None) -> None:
        self.spec = spec

    def on_save_checkpoint(self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict) -> None:
        checkpoint[FORMAT_KEY] = FORMAT_VERSION
        checkpoint[SPEC_KEY] = self.spec
