"""Feature cache: with a fully frozen backbone and a deterministic train transform, run the backbone
once per split and train the head on the stored features.

`FeatureCacheDataModule` wraps a datamodule: its loaders yield `(features N x D, labels)` in the
same order, batch size and sampler as the wrapped loaders, and the task skips its encoder when a
batch is 2-D. Checkpoints stay full-model checkpoints. Features are computed lazily, when Lightning
first asks for a loader (after the model is on its device), and are looked up by `cache_key`, so a
changed encoder (e.g. loading another checkpoint) recomputes them. Under DDP every rank computes
the features of the whole split; Lightning's DistributedSampler then shards them as it would shard
the images.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytorch_lightning as pl
import torch
import torch.nn as nn
from torch.utils.data import DataLoader, Dataset

from transferkit.errors import ConfigError

log = logging.getLogger(__name__)

# Train pipelines without randomness (`augment.name`), so every epoch would see the same features.
DETERMINISTIC_AUGMENTS = frozenset({"none"})
# Above this, features go to a memory-mapped file (data.cache_dir, else the run directory).
MEMORY_LIMIT_BYTES = 2 * 2**30


# -- deciding ----------------------------------------------------------------------------------
def cache_blockers(task_kind: str, strategy: str, unfreeze_at_epoch: int | None, augment: str,
                   mixup_alpha: float = 0.0, cutmix_alpha: float = 0.0, drop_rate: float = 0.0,
                   drop_path_rate: float = 0.0) -> list[str]:
    """Why cached features would not match what the backbone computes during training ([] = valid)."""
    reasons = []
    if task_kind != "classification":
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
    for key, value in (("augment.mixup_alpha", mixup_alpha), ("augment.cutmix_alpha", cutmix_alpha),
                       ("model.drop_rate", drop_rate), ("model.drop_path_rate", drop_path_rate)):
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


# -- computing and storing ------------------------------------------------------------------
@dataclass
class FeatureSet:
    """One split's features (N x D float32, in memory or a read-only memory map) and labels."""

    features: np.ndarray
    labels: np.ndarray
    key: str
    location: str
    seconds: float = 0.0
    reused: bool = False

    def describe(self) -> dict:
        return {"items": int(self.features.shape[0]), "dim": int(self.features.shape[1]), "key": self.key,
                "location": self.location, "seconds": round(self.seconds, 3), "reused": self.reused}


class FeatureDataset(Dataset):
    """`(feature vector, label)` items: what the task's head sees in place of `(image, label)`."""

    def __init__(self, feature_set: FeatureSet) -> None:
        self.features, self.labels = feature_set.features, feature_set.labels

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        return torch.from_numpy(np.array(self.features[index], dtype=np.float32)), int(self.labels[index])


Allocate = Callable[[int, int], np.ndarray]


def extract_features(encoder: nn.Module, dataset: Dataset, allocate: Allocate, batch_size: int,
                     num_workers: int = 0,
                     forward_context: Callable[[], AbstractContextManager] = nullcontext,
                     convert_input: Callable[[torch.Tensor], torch.Tensor] = lambda x: x,
                     ) -> tuple[np.ndarray, np.ndarray]:
    """Pooled `encoder(x)` of every item in order (eval mode, inference mode); returns (features, labels).

    `allocate(n, dim)` returns the N x D float32 array to fill (in memory or a memmap).
    """
    labels = np.empty(len(dataset), dtype=np.int64)
    if not len(dataset):
        return np.empty((0, 0), dtype=np.float32), labels
    device = next(encoder.parameters()).device
    # Its own generator: creating the iterator must not draw from the global RNG, so the training
    # shuffles are the same as in an uncached run.
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers,
                        generator=torch.Generator())
    out: np.ndarray | None = None
    modes = [(module, module.training) for module in encoder.modules()]
    encoder.eval()
    start = 0
    try:
        with torch.inference_mode(), forward_context():
            for images, targets in loader:
                feats = encoder(convert_input(images.to(device))).float().cpu().numpy()
                if out is None:
                    out = allocate(len(dataset), feats.shape[1])
                out[start:start + len(feats)] = feats
                labels[start:start + len(feats)] = np.asarray(targets)
                start += len(feats)
    finally:
        for module, mode in modes:
            module.training = mode
    assert out is not None and start == len(dataset), "feature extraction saw fewer items than the dataset"
    return out, labels


def _feature_paths(directory: Path, key: str) -> tuple[Path, Path]:
    return directory / f"features-{key}.npy", directory / f"features-{key}.labels.npy"


def load_feature_set(directory: Path, key: str) -> FeatureSet | None:
    """A complete feature set stored under `directory` by `save`, or None."""
    features_path, labels_path = _feature_paths(directory, key)
    if not (features_path.is_file() and labels_path.is_file()):
        return None
    features = np.load(features_path, mmap_mode="r")
    return FeatureSet(features, np.load(labels_path), key, str(features_path), reused=True)


@dataclass
class FeatureStore:
    """Feature sets by key: in memory, or memory-mapped `.npy` files under a directory."""

    cache_dir: Path | None = None  # data.cache_dir: kept, reused by later runs with the same key
    spill_dir: Path | None = None  # run directory: for sets above the memory limit, removed by release()
    memory_limit_bytes: int = MEMORY_LIMIT_BYTES
    sets: dict[str, FeatureSet] = field(default_factory=dict)
    spilled: list[Path] = field(default_factory=list)

    def get(self, key: str, compute: Callable[[Allocate], tuple[np.ndarray, np.ndarray]]) -> FeatureSet:
        if key in self.sets:
            return FeatureSet(**{**vars(self.sets[key]), "reused": True, "seconds": 0.0})
        found = load_feature_set(self.cache_dir, key) if self.cache_dir else None
        if found is not None:
            log.info("Feature cache: reusing %s", found.location)
        else:
            found = self._compute(key, compute)
        self.sets[key] = found
        return found

    def _compute(self, key: str, compute: Callable[[Allocate], tuple[np.ndarray, np.ndarray]]) -> FeatureSet:
        start = time.perf_counter()
        target: dict[str, Path] = {}

        def allocate(n: int, dim: int) -> np.ndarray:
            directory = self.cache_dir
            if directory is None and n * dim * 4 > self.memory_limit_bytes:
                directory = self.spill_dir
            if directory is None:
                return np.empty((n, dim), dtype=np.float32)
            directory.mkdir(parents=True, exist_ok=True)
            target["final"] = _feature_paths(directory, key)[0]
            target["tmp"] = target["final"].with_name(f"{target['final'].name}.tmp-{os.getpid()}")
            return np.lib.format.open_memmap(target["tmp"], mode="w+", dtype=np.float32, shape=(n, dim))

        features, labels = compute(allocate)
        if not target:
            return FeatureSet(features, labels, key, "memory", time.perf_counter() - start)
        features.flush()
        del features
        labels_path = _feature_paths(target["final"].parent, key)[1]
        labels_tmp = labels_path.with_name(f"{labels_path.name}.tmp-{os.getpid()}.npy")
        np.save(labels_tmp, labels)
        # DDP ranks may write the same key: each its own temporary file, renamed atomically.
        os.replace(labels_tmp, labels_path)
        os.replace(target["tmp"], target["final"])  # last: its presence marks a complete set
        if self.cache_dir is None:
            self.spilled += [target["final"], labels_path]
        stored = load_feature_set(target["final"].parent, key)
        assert stored is not None
        return FeatureSet(stored.features, stored.labels, key, stored.location, time.perf_counter() - start)

    def release(self) -> None:
        """Forget the sets and delete files spilled into the run directory (data.cache_dir stays)."""
        self.sets.clear()
        for path in self.spilled:
            path.unlink(missing_ok=True)
        self.spilled.clear()


# -- Lightning ------------------------------------------------------------------------------
class FeatureCacheDataModule(pl.LightningDataModule):
    """Serve `datamodule`'s splits as cached `(features, label)` batches of the frozen `encoder`.

    Each loader keeps the wrapped loader's dataset order, batch size, sampler (shuffle, weighted)
    and `drop_last`, so training sees the same batches as without the cache, minus the encoder.
    """

    def __init__(self, datamodule: pl.LightningDataModule, encoder: nn.Module, backbone: str,
                 image_size: int, in_chans: int, store: FeatureStore | None = None) -> None:
        super().__init__()
        self.datamodule, self.encoder, self.backbone = datamodule, encoder, backbone
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
            self.encoder, dataset, allocate, batch_size, num_workers, context, convert))

    def _cached(self, stage: str, loader: DataLoader) -> DataLoader:
        feature_set = self.features(loader.dataset, loader.batch_size or 1, loader.num_workers)
        self.loaders[stage] = feature_set.describe()
        action = "reused" if feature_set.reused else f"computed in {feature_set.seconds:.2f} s"
        log.info("Feature cache: %s loader, %d x %d features %s (%s)", stage, *feature_set.features.shape,
                 action, feature_set.location)
        return DataLoader(FeatureDataset(feature_set), batch_size=loader.batch_size, sampler=loader.sampler,
                          drop_last=loader.drop_last, num_workers=0)

    def report(self) -> dict:
        """For results.json: what each loader served."""
        return {"used": True, "loaders": dict(self.loaders)}
