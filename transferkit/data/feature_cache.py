"""Feature cache: with a fully frozen backbone and a deterministic train transform, run the backbone
once per split and train the head on the stored features.

`FeatureCacheDataModule` wraps a datamodule: its loaders yield `(features N x D, labels)` in the
same order, batch size and sampler as the wrapped loaders, and the task skips its encoder when a
batch is 2-D. Checkpoints stay full-model checkpoints. Features are computed lazily, when Lightning
first asks for a loader (after the model is on its device), and are looked up by `cache_key`, so a
changed encoder (e.g. loading another checkpoint) recomputes them. Under DDP every rank computes
the features of the whole split; Lightning's DistributedSampler then shards them as it would shard
the images. Computing and storing the features lives in `feature_store`.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import pytorch_lightning as pl
import torch
import torch.nn as nn
from torch.utils.data import DataLoader, Dataset

from transferkit.data.feature_store import FeatureDataset, FeatureSet, FeatureStore, extract_features
from transferkit.errors import ConfigError

log = logging.getLogger(__name__)

# Train pipelines without randomness (`augment.name`), so every epoch would see the same features.
DETERMINISTIC_AUGMENTS = frozenset({"none"})


# -- deciding ----------------------------------------------------------------------------------
def cache_blockers(task_kind: str, strategy: str, unfreeze_at_epoch: int | None, augment: str,
                   mixup_alpha: float = 0.0, cutmix_alpha: float = 0.0, drop_rate: float = 0.0,
                   drop_path_rate: float = 0.0, spatial_dropout: float = 0.0, decode: str = "cpu") -> list[str]:
    """Why cached features would not match what the backbone computes during training ([] = valid)."""
    reasons = []
    if task_kind not in ("classification", "multilabel"):
        reasons.append(f"task.kind={task_kind!r} trains a decoder on spatial features; only "
                       "classification caches pooled features")
    if strategy != "freeze":
        reasons.append(f"finetune.strategy={strategy!r} trains backbone stages, so features change "
                       "every step; use finetune=freeze")
    if unfreeze_at_epoch is not None:
        reasons.append(f"finetune.unfreeze_at_epoch={unfreeze_at_epoch!r} unfreezes the backbone "
                       "during the run; set it to null")
    if augment not in DETERMINISTIC_AUGMENTS:
        reasons.append(f"augment.name={augment!r} draws new random augmentations every epoch; use "
                       f"augment={sorted(DETERMINISTIC_AUGMENTS)[0]}")
    if decode != "cpu":
        reasons.append(f"data.decode={decode!r} decodes batches on the device, outside the dataset the "
                       "cache reads; use data.decode=cpu")
    for key, value in (("augment.mixup_alpha", mixup_alpha), ("augment.cutmix_alpha", cutmix_alpha),
                       ("model.drop_rate", drop_rate), ("model.drop_path_rate", drop_path_rate),
                       ("model.spatial_dropout", spatial_dropout)):
        if value:
            reasons.append(f"{key}={value!r} makes each training forward pass random; set it to 0")
    return reasons


def choose_feature_cache(requested: bool | None, blockers: list[str], wasteful: str | None = None) -> bool:
    """`finetune.cache_features`: null = on where valid, false = off, true = on (error if invalid).

    `wasteful` (e.g. a fast_dev_run that reads a batch or two) turns the automatic choice off.
    """
    if requested not in (None, True, False):
        raise ConfigError(f"finetune.cache_features={requested!r} must be true, false or null "
                          "(null: cache backbone features where that gives the same results).")
    if requested is False:
        return False
    if blockers and requested:
        raise ConfigError(
            "finetune.cache_features=True is invalid for this run: " + "; ".join(blockers)
            + ". Cached features must equal what the frozen backbone computes every epoch. Fix the "
            "above, or set finetune.cache_features=null (cache only where valid) or false."
        )
    return not blockers and (requested is True or wasteful is None)


# Features kept on the GPU when they take at most this fraction of its memory (else served from the host).
DEVICE_FEATURE_FRACTION = 0.125


def choose_feature_device(nbytes: int, device: torch.device | None, device_memory: int,
                          fraction: float = DEVICE_FEATURE_FRACTION) -> torch.device | None:
    """Where the cached features are served from: the training GPU when the set is small beside its
    memory (then a batch is one gather on the device), else None (the host: gathered and copied per batch)."""
    if device is None or device.type != "cuda" or nbytes > fraction * device_memory:
        return None
    return device


# -- invalidation key -----------------------------------------------------------------------
def encoder_digest(encoder: nn.Module) -> str:
    """SHA-256 over the encoder's state dict (parameter and buffer names, dtypes, shapes, values)."""
    digest = hashlib.sha256()
    for name, tensor in encoder.state_dict().items():
        flat = tensor.detach().to("cpu").contiguous().reshape(-1)
        digest.update(f"{name}|{flat.dtype}|{tuple(tensor.shape)}|".encode())
        digest.update(flat.view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def source_fingerprint(source: Dataset) -> dict:
    """What identifies a split's raw samples: files (path, size, mtime), arrays (hash) or attributes."""
    if hasattr(source, "source"):  # TransformedDataset, DecodedImageCache: describe what they wrap
        return source_fingerprint(source.source)
    if hasattr(source, "items"):
        rows = []
        for path, label in source.items:
            stat = Path(path).stat()
            rows.append([str(path), int(label), stat.st_size, stat.st_mtime_ns])
        return {"files": rows, "in_chans": getattr(source, "in_chans", None)}
    if hasattr(source, "images") and hasattr(source, "labels"):
        digest = hashlib.sha256(np.ascontiguousarray(source.images).tobytes())
        digest.update(np.asarray(source.labels, dtype=np.int64).tobytes())
        return {"arrays": digest.hexdigest(), "in_chans": getattr(source, "in_chans", None)}
    simple = {k: v for k, v in vars(source).items() if isinstance(v, (str, int, float, bool, type(None)))}
    return {"class": type(source).__name__, "length": len(source), **simple}


def cache_key(dataset: Dataset, transform: Callable, encoder: nn.Module, backbone: str,
              data: str, image_size: int, in_chans: int) -> str:
    """Key of a split's features: data + split membership, backbone + weights, transform, size, channels."""
    record = {"data": data, "samples": source_fingerprint(dataset), "backbone": backbone,
              "encoder": encoder_digest(encoder), "transform": repr(transform),
              "image_size": image_size, "in_chans": in_chans}
    return hashlib.sha256(json.dumps(record, sort_keys=True, default=str).encode()).hexdigest()[:24]


# -- Lightning ------------------------------------------------------------------------------
class FeatureCacheDataModule(pl.LightningDataModule):
    """Serve `datamodule`'s splits as cached `(features, label)` batches of the frozen `encoder`.

    Each loader keeps the wrapped loader's dataset order, batch size, sampler (shuffle, weighted)
    and `drop_last`, so training sees the same batches as without the cache, minus the encoder.
    """

    def __init__(self, datamodule: pl.LightningDataModule, encoder: nn.Module, backbone: str,
                 image_size: int, in_chans: int, store: FeatureStore | None = None,
                 prepare_input: Callable[[torch.Tensor], torch.Tensor] | None = None) -> None:
        super().__init__()
        self.datamodule, self.encoder, self.backbone = datamodule, encoder, backbone
        # The task's own input preparation (channels last with model.channels_last), so the encoder
        # runs on the batches as it would in training.
        self.prepare_input = prepare_input or (lambda x: x)
        self.image_size, self.in_chans = image_size, in_chans
        self.store = store or FeatureStore()
        self.loaders: dict[str, dict] = {}

    def prepare_data(self) -> None:
        self.datamodule.prepare_data()

    def setup(self, stage: str) -> None:
        self.datamodule.setup(stage)

    def teardown(self, stage: str) -> None:
        self.datamodule.teardown(stage)

    def state_dict(self) -> dict:
        return self.datamodule.state_dict()

    def load_state_dict(self, state_dict: dict) -> None:
        self.datamodule.load_state_dict(state_dict)

    def train_dataloader(self) -> DataLoader:
        return self._cached("train", self.datamodule.train_dataloader())

    def val_dataloader(self) -> DataLoader:
        return self._cached("val", self.datamodule.val_dataloader())

    def test_dataloader(self) -> DataLoader:
        return self._cached("test", self.datamodule.test_dataloader())

    def features(self, dataset: Dataset, batch_size: int, num_workers: int) -> FeatureSet:
        """The dataset's features, computed now unless stored under the same key."""
        transform = getattr(dataset, "transform", None)
        describe = getattr(self.datamodule, "describe", lambda: type(self.datamodule).__name__)
        key = cache_key(dataset, transform, self.encoder, self.backbone, describe(), self.image_size,
                        self.in_chans)
        plugin = getattr(getattr(self, "trainer", None), "precision_plugin", None)
        context = plugin.forward_context if plugin is not None else nullcontext
        convert = plugin.convert_input if plugin is not None else (lambda x: x)
        return self.store.get(key, lambda allocate: extract_features(
            self.encoder, dataset, allocate, batch_size, num_workers, context,
            lambda x: self.prepare_input(convert(x))))

    def _cached(self, stage: str, loader: DataLoader) -> DataLoader:
        feature_set = self.features(loader.dataset, loader.batch_size or 1, loader.num_workers)
        self.loaders[stage] = feature_set.describe()
        device = self._device()
        on_device = choose_feature_device(feature_set.features.nbytes, device,
                                          torch.cuda.get_device_properties(device).total_memory
                                          if device is not None and device.type == "cuda" else 0)
        self.loaders[stage]["served_from"] = str(on_device) if on_device is not None else "host"
        action = "reused" if feature_set.reused else f"computed in {feature_set.seconds:.2f} s"
        log.info("Feature cache: %s loader, %d x %d features %s (%s), served from %s", stage,
                 *feature_set.features.shape, action, feature_set.location, self.loaders[stage]["served_from"])
        return DataLoader(FeatureDataset(feature_set, device=on_device), batch_size=loader.batch_size,
                          sampler=loader.sampler, drop_last=loader.drop_last, num_workers=0,
                          collate_fn=FeatureDataset.collate)

    def _device(self) -> torch.device | None:
        trainer = getattr(self, "trainer", None)
        return trainer.strategy.root_device if trainer is not None else None

    def report(self) -> dict:
        """For results.json: what each loader served."""
        return {"used": True, "loaders": dict(self.loaders)}
