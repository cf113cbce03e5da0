"""Computed backbone features by key: in memory, or memory-mapped `.npy` files (see feature_cache).

`extract_features` runs a frozen encoder over a dataset once; `FeatureStore` keeps the result under
its cache key, spilling sets above `MEMORY_LIMIT_BYTES` to disk and reusing sets that an earlier
run left in `data.cache_dir`.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
from torch.utils.data import DataLoader, Dataset

from transferkit.data.device_index import device_index

log = logging.getLogger(__name__)

# Above this, features go to a memory-mapped file (data.cache_dir, else the run directory).
MEMORY_LIMIT_BYTES = 2 * 2**30


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
    """`(feature vector, label)` items: what the task's head sees in place of `(image, label)`.

    `features` and `labels` stay the host arrays. With `device` (a GPU run whose set fits, see
    `feature_cache.choose_feature_device`) a copy lives on the device and `__getitems__` gathers whole
    batches there: no per-step host gather and host-to-device copy, and the DataLoader's batch
    transfer is a no-op.
    """

    def __init__(self, feature_set: FeatureSet, device: torch.device | None = None) -> None:
        self.features, self.labels = feature_set.features, feature_set.labels
        self.device = torch.device(device) if device is not None else None
        self._on_device = None
        if self.device is not None:
            self._on_device = (torch.from_numpy(np.ascontiguousarray(self.features, dtype=np.float32)).to(self.device),
                               torch.from_numpy(np.asarray(self.labels, dtype=np.int64)).to(self.device))

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        return torch.from_numpy(np.array(self.features[index], dtype=np.float32)), int(self.labels[index])

    def __getitems__(self, indices: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """A whole batch in one gather (the DataLoader's `collate_fn` must be `collate`)."""
        if self._on_device is not None:
            index = device_index(indices, self.device)
            return self._on_device[0][index], self._on_device[1][index]
        index = np.asarray(indices, dtype=np.int64)
        return (torch.from_numpy(np.asarray(self.features[index], dtype=np.float32)),
                torch.from_numpy(np.asarray(self.labels[index], dtype=np.int64)))

    @staticmethod
    def collate(batch: tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        return batch


Allocate = Callable[[int, int], np.ndarray]


def extract_features(encoder: nn.Module, dataset: Dataset, allocate: Allocate, batch_size: int,
                     num_workers: int = 0,
                     forward_context: Callable[[], AbstractContextManager] = nullcontext,
                     convert_input: Callable[[torch.Tensor], torch.Tensor] = lambda x: x,
                     ) -> tuple[np.ndarray, np.ndarray]:
    """Pooled `encoder(x)` of every item in order (eval mode, inference mode); returns (features, labels).

    `allocate(n, dim)` returns the N x D float32 array to fill (in memory or a memmap). On a GPU the
    features stay on the device and are copied to the host in chunks of `HOST_COPY_BYTES`, so the
    device is not drained by a blocking copy after every batch.
    """
    labels = np.empty(len(dataset), dtype=np.int64)
    if not len(dataset):
        return np.empty((0, 0), dtype=np.float32), labels
    device = next(encoder.parameters()).device
    # Its own generator: creating the iterator must not draw from the global RNG, so the training
    # shuffles are the same as in an uncached run.
    # A dataset of whole batches (data.embedded=synthetic, on the device) brings its own collate.
    on_device = getattr(dataset, "yields_batches", False)
    collate = dataset.collate if on_device else None
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers,
                        generator=torch.Generator(), collate_fn=collate,
                        pin_memory=device.type == "cuda" and not on_device)
    sink = _HostSink(allocate, labels, chunk_bytes=HOST_COPY_BYTES if device.type == "cuda" else 0)
    modes = [(module, module.training) for module in encoder.modules()]
    encoder.eval()
    try:
        with torch.inference_mode(), forward_context():
            for images, targets in loader:
                feats = encoder(convert_input(images.to(device, non_blocking=True))).float()
                sink.add(feats, targets)
            sink.flush()
    finally:
        for module, mode in modes:
            module.training = mode
    assert sink.out is not None and sink.start == len(dataset), "feature extraction saw fewer items than the dataset"
    return sink.out, labels


HOST_COPY_BYTES = 64 * 2**20  # GPU features gathered on the device up to this size, then copied at once


class _HostSink:
    """Writes batches of features and labels into the host arrays, in order: at once on the CPU, in
    chunks of about `chunk_bytes` from a GPU (one host synchronisation per chunk, not per batch)."""

    def __init__(self, allocate: Allocate, labels: np.ndarray, chunk_bytes: int) -> None:
        self.allocate, self.labels, self.chunk_bytes = allocate, labels, chunk_bytes
        self.out: np.ndarray | None = None
        self.start = 0
        self.pending: list[tuple[torch.Tensor, torch.Tensor | list]] = []
        self.pending_bytes = 0

    def add(self, feats: torch.Tensor, targets) -> None:
        self.pending.append((feats, targets))
        self.pending_bytes += feats.numel() * feats.element_size()
        if self.pending_bytes >= self.chunk_bytes:
            self.flush()

    def flush(self) -> None:
        if not self.pending:
            return
        feats = torch.cat([f for f, _ in self.pending]).cpu().numpy()
        targets = [t.cpu() if isinstance(t, torch.Tensor) else t for _, t in self.pending]
        self.pending, self.pending_bytes = [], 0
        if self.out is None:
            self.out = self.allocate(len(self.labels), feats.shape[1])
        self.out[self.start:self.start + len(feats)] = feats
        self.labels[self.start:self.start + len(feats)] = np.concatenate([np.asarray(t).reshape(-1) for t in targets])
        self.start += len(feats)


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
