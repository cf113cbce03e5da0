"""Turn config groups into objects: datamodule, task, trainer. Only commands call these."""

from __future__ import annotations

import inspect
import logging
from pathlib import Path

import pytorch_lightning as pl
from omegaconf import DictConfig, OmegaConf
from pytorch_lightning.callbacks import ModelCheckpoint
from pytorch_lightning.utilities.exceptions import MisconfigurationException

from transferkit.errors import ConfigError, construct, did_you_mean, lookup
from transferkit.finetune import FinetunePlan
from transferkit.models.weight_loading import load_weights
from transferkit.models.weights import WeightsSource

log = logging.getLogger(__name__)


def task_classes() -> dict[str, type]:
    from transferkit.tasks.classification import ClassificationTask

    table: dict[str, type] = {"classification": ClassificationTask}
    try:
        from transferkit.tasks.segmentation import SegmentationTask
    except ImportError:  # segmentation extras not importable: classification still works
        return table
    table["segmentation"] = SegmentationTask
    return table


def container(node) -> dict:
    return OmegaConf.to_container(node, resolve=True) if node is not None else {}


def build_datamodule(cfg: DictConfig) -> pl.LightningDataModule:
    """The datamodule of a planned config (`transferkit.planning`: input format resolved)."""
    data = container(cfg.data)
    kind = cfg.task.kind
    extra = {"seed": cfg.seed, "in_chans": cfg.model.in_chans, "augment": cfg.augment.name}
    if kind != "segmentation":
        extra["flips"] = bool(cfg.augment.get("flips", True))
    if kind == "segmentation":
        from transferkit.data.segmentation import SegmentationDataModule

        return construct(SegmentationDataModule, {**data, **extra}, "data")
    from transferkit.data.datamodule import ClassificationDataModule

    return construct(ClassificationDataModule, {**data, **extra}, "data")


def data_config(cfg: DictConfig) -> dict:
    """The input format a task records, so predict/export prepare images exactly as training did."""
    from transferkit.data.transforms import trains_with_flips

    data = cfg.data
    # The segmentation datamodule flips whenever its pipeline does; classification obeys augment.flips.
    flips = cfg.task.kind == "segmentation" or bool(cfg.augment.get("flips", True))
    return {"image_size": int(data.image_size), "in_chans": int(cfg.model.in_chans), "mean": list(data.mean),
            "std": list(data.std), "interpolation": str(data.interpolation), "augment": cfg.augment.name,
            "flips": trains_with_flips(cfg.augment.name, flips)}


def build_task(cfg: DictConfig, datamodule, weights: WeightsSource | None = None):
    """Build the task for `cfg.task.kind`; with `weights`, initialise its backbone from them."""
    task_cfg = container(cfg.task)
    cls = lookup(task_classes(), task_cfg.pop("kind"), "task.kind")
    kwargs = {
        **task_cfg,
        "num_classes": len(datamodule.class_names),
        "class_names": list(datamodule.class_names),
        "model": container(cfg.model),
        "finetune": container(cfg.finetune),
        "optimizer": container(cfg.optimizer),
        "scheduler": container(cfg.scheduler),
        "data_config": data_config(cfg),
    }
    if cfg.get("regularization") is not None:
        kwargs["regularization"] = container(cfg.regularization)
    params = inspect.signature(cls).parameters
    augment = container(cfg.augment)
    for key in ("mixup_alpha", "cutmix_alpha"):
        if key in params and key in augment:
            kwargs[key] = augment[key]
    if "class_weights" in params and hasattr(datamodule, "class_weights"):
        kwargs["class_weights"] = datamodule.class_weights()
    task = construct(cls, kwargs, "task")
    task.weights_report = None if weights is None else load_weights(
        task.encoder, weights, backbone_name=cfg.model.backbone, in_chans=int(cfg.model.in_chans),
        image_size=int(cfg.data.image_size), cache_dir=cfg.model.get("cache_dir"))
    return task


def build_feature_cache(cfg: DictConfig, datamodule, task, run_dir: Path):
    """Serve the frozen backbone's features once per split instead of images (data.feature_cache)."""
    from transferkit.data.feature_cache import FeatureCacheDataModule
    from transferkit.data.feature_store import FeatureStore

    cache_dir = cfg.data.get("cache_dir")
    store = FeatureStore(cache_dir=Path(cache_dir) / "features" if cache_dir else None,
                         spill_dir=run_dir / "feature_cache")
    return FeatureCacheDataModule(datamodule, task.encoder, str(cfg.model.backbone),
                                  image_size=int(cfg.data.image_size), in_chans=int(cfg.model.in_chans),
                                  store=store, prepare_input=task.prepare_input)


def trainer_flags() -> set[str]:
    return {n for n in inspect.signature(pl.Trainer.__init__).parameters if n != "self"}


def build_callbacks(cfg: DictConfig, run_dir: Path, monitor: str, mode: str,
                    last_every_n_epochs: int = 1) -> list[pl.Callback]:
    from pytorch_lightning.callbacks import EarlyStopping, LearningRateMonitor

    checkpoint = ModelCheckpoint(dirpath=run_dir / "checkpoints", filename="best", monitor=monitor,
                                 mode=mode, save_last=False, auto_insert_metric_name=False,
                                 enable_version_counter=False)
    # save_last=True would refresh last.ckpt only when best.ckpt is saved (Lightning 2.6), so a
    # resume from last.ckpt could lose epochs; this one is overwritten after every epoch (or every
    # `last_every_n_epochs`: a finetune=auto race leg writes it once, where the next leg resumes).
    last = LastCheckpoint(dirpath=run_dir / "checkpoints", filename="last", monitor=None, save_top_k=1,
                          auto_insert_metric_name=False, enable_version_counter=False,
                          every_n_epochs=last_every_n_epochs)
    callbacks: list[pl.Callback] = [checkpoint, last]
    callbacks += run_guard_callbacks(run_dir / "checkpoints")
    every_minutes = (cfg.get("checkpoint") or {}).get("every_minutes")
    if every_minutes is not None:
        from transferkit.interval_checkpoint import IntervalCheckpoint

        callbacks.append(IntervalCheckpoint(run_dir / "checkpoints", every_minutes))
    patience = cfg.early_stopping.patience
    if patience:
        callbacks.append(EarlyStopping(monitor=cfg.early_stopping.monitor or monitor, mode=mode,
                                       patience=patience, min_delta=cfg.early_stopping.min_delta))
    if cfg.task.kind == "classification" and FinetunePlan(**container(cfg.finetune)).probes_first:
        from transferkit.tasks.linear_probe import LinearProbeCallback

        callbacks.append(LinearProbeCallback(seed=int(cfg.seed)))  # finetune.head_solver=lbfgs or lpft
    from transferkit.averaging import build_averaging_callbacks

    # After the linear probe: an average starts from the solved head.
    callbacks += build_averaging_callbacks(container(cfg.get("ema")), container(cfg.get("swa")))
    callbacks.append(LearningRateMonitor(logging_interval="epoch"))  # after swa.lr is set for the epoch
    from transferkit.reports.run_report import report_options

    if report_options(cfg)["enabled"]:
        from transferkit.reports.test_outputs import TestOutputsCallback

        callbacks.append(TestOutputsCallback())  # the test pass's outputs, for report.html
    if cfg.task.kind == "segmentation":
        from transferkit.reports.seg_grid import GRID_SAMPLES, SegmentationGridCallback

        samples = cfg.task.get("grid_samples", GRID_SAMPLES)
        callbacks.append(SegmentationGridCallback(run_dir, samples=samples))
    return callbacks


class LastCheckpoint(ModelCheckpoint):
    """last.ckpt: its saved state does not depend on how often it saves (`every_n_epochs`), so a
    race leg that writes it only at its end resumes the state the previous leg saved."""

    @property
    def state_key(self) -> str:  # the plain every-epoch ModelCheckpoint's key, as in any run's last.ckpt
        options = {"monitor": self.monitor, "mode": self.mode, "every_n_train_steps": 0, "every_n_epochs": 1,
                   "train_time_interval": None}
        return f"ModelCheckpoint{options!r}"


def run_guard_callbacks(checkpoints: Path) -> list[pl.Callback]:
    """What lets a run stop and resume: the random state in every checkpoint, `last.ckpt` saved on
    SIGTERM/SIGINT, and a stop at the first non-finite loss (see transferkit.run_guards)."""
    from transferkit.rng_state import RngStateCallback
    from transferkit.run_guards import FiniteLossGuard, SignalCheckpoint

    return [RngStateCallback(), SignalCheckpoint(checkpoints), FiniteLossGuard(checkpoints)]


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

    from transferkit.checkpoint_io import AtomicCheckpointIO

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


def build_trainer(cfg: DictConfig, run_dir: Path, monitor: str, mode: str,
                  extra_callbacks: list | None = None, flags_override: dict | None = None,
                  log_version: str = "", last_every_n_epochs: int = 1) -> pl.Trainer:
    """The Trainer of `cfg.trainer`; `flags_override` (e.g. a race leg's max_epochs), `log_version`
    (a sub-folder for its metrics) and `last_every_n_epochs` (last.ckpt only at the epochs it
    divides, e.g. a race leg's end) are for runs made of several fits."""
    flags = {**container(cfg.trainer), **(flags_override or {})}
    valid = trainer_flags()
    for key in flags:
        if key not in valid:
            raise ConfigError(f"trainer.{key} is not a Lightning Trainer flag.{did_you_mean(key, valid)}")
    for key in ("callbacks", "logger", "default_root_dir"):
        if key in flags:
            raise ConfigError(f"trainer.{key} is managed by transferkit (run_dir=..., early_stopping.*).")
    from transferkit.console import is_interactive, progress_callbacks

    if flags.get("benchmark") is None and not flags.get("deterministic"):
        flags["benchmark"] = True  # one input size per run: let cuDNN pick its fastest algorithms (GPU only)
    progress, progress_flags = progress_callbacks(is_interactive(), flags.pop("enable_progress_bar", None))
    callbacks = build_callbacks(cfg, run_dir, monitor, mode, last_every_n_epochs) + progress + list(extra_callbacks or [])
    plugins = build_plugins(flags)
    try:
        return pl.Trainer(**flags, **progress_flags, default_root_dir=str(run_dir), callbacks=callbacks,
                          logger=build_loggers(run_dir, log_version), plugins=plugins)
    except (MisconfigurationException, TypeError, ValueError) as err:  # a value Lightning refuses
        raise ConfigError(f"a trainer.* setting is refused by Lightning: {err}") from err
