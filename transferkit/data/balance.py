"""Class imbalance: per-class loss weights and a seeded weighted sampler that shards under DDP."""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import Sampler


def count_labels(labels: Sequence[int] | np.ndarray, num_classes: int) -> np.ndarray:
    """Images per class, ``int64`` of length ``num_classes``."""
    labels = np.asarray(labels, dtype=np.int64)
    if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
        raise ValueError(f"Labels must lie in 0..{num_classes - 1}; got {labels.min()}..{labels.max()}.")
    return np.bincount(labels, minlength=num_classes)


def class_weights(labels: Sequence[int] | np.ndarray, num_classes: int) -> np.ndarray:
    """Inverse-frequency loss weights ``n / (k * n_c)``: mean weight over the images is 1.

    A class without images gets weight 0 (it never appears as a target).
    """
    counts = count_labels(labels, num_classes).astype(np.float64)
    present = counts > 0
    weights = np.zeros(num_classes, dtype=np.float64)
    weights[present] = counts.sum() / (present.sum() * counts[present])
    return weights


class BalancedClassSampler(Sampler[int]):
    """Draws ``num_samples`` indices with replacement so every class is equally likely.

    The draw depends only on ``seed`` and the epoch (``set_epoch``), so every DDP rank
    computes the same sequence and Lightning's ``DistributedSamplerWrapper`` shards it
    into disjoint per-rank slices.
    """

    def __init__(self, labels: Sequence[int] | np.ndarray, num_classes: int, seed: int = 0,
                 num_samples: int | None = None) -> None:
        labels = np.asarray(labels, dtype=np.int64)
        if labels.size == 0:
            raise ValueError("data.balance=sampler needs training images; the train split is empty.")
        per_class = class_weights(labels, num_classes)[labels]
        self.weights = torch.as_tensor(per_class, dtype=torch.double)
        self.num_samples = int(num_samples) if num_samples is not None else len(labels)
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.num_samples

    def __iter__(self) -> Iterator[int]:
        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        draw = torch.multinomial(self.weights, self.num_samples, replacement=True, generator=generator)
        return iter(draw.tolist())


def build_weighted_sampler(labels: Sequence[int] | np.ndarray, num_classes: int,
                           seed: int = 0) -> BalancedClassSampler:
    """The ``data.balance=sampler`` sampler: one epoch draws as many images as the train split holds."""
    return BalancedClassSampler(labels, num_classes, seed=seed)
