"""Multi-label targets: an image's label set travels as one integer, bit `c` set for class `c`.

Every `(path, label)` path of the pipeline (splits.json, k-fold, the feature cache's int64 labels,
`source_labels`) carries the set unchanged; the task turns a batch of these masks into multi-hot rows
(`multi_hot`). At most `MAX_CLASSES` classes, so the mask stays a positive int64.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np
import torch

MAX_CLASSES = 62  # bits of a positive int64 (with room to spare)
LABEL_SEPARATOR = ";"  # the `labels` column of a manifest, predictions.csv's `labels`


def label_mask(names: Iterable[str], index: dict[str, int]) -> int:
    """The bitmask of a label set (`index`: class name -> its position)."""
    mask = 0
    for name in names:
        mask |= 1 << index[name]
    return mask


def mask_names(mask: int, classes: Sequence[str]) -> list[str]:
    """The class names of a bitmask, in class order."""
    return [name for c, name in enumerate(classes) if (int(mask) >> c) & 1]


def multi_hot(masks, num_classes: int):
    """N bitmasks -> N x C 0/1 rows (a float tensor for a tensor, a uint8 array for an array)."""
    if torch.is_tensor(masks):
        bits = torch.arange(num_classes, device=masks.device)
        return ((masks.long()[:, None] >> bits) & 1).float()
    masks = np.asarray(masks, dtype=np.int64)
    return ((masks[:, None] >> np.arange(num_classes)) & 1).astype(np.uint8)


def positive_counts(masks, num_classes: int) -> np.ndarray:
    """Images carrying each class."""
    return multi_hot(np.asarray(masks, dtype=np.int64), num_classes).sum(axis=0).astype(np.int64)


def positive_weights(masks, num_classes: int, cap: float = 50.0) -> list[float]:
    """BCE `pos_weight` per class: negatives / positives (capped), so a rare label's misses count as
    much as its many negatives; a class without positives gets 1."""
    masks = np.asarray(masks, dtype=np.int64)
    positives = positive_counts(masks, num_classes).astype(np.float64)
    negatives = len(masks) - positives
    weights = np.where(positives > 0, negatives / np.maximum(positives, 1.0), 1.0)
    return np.clip(weights, 1.0 / cap, cap).round(6).tolist()
