"""Exact nearest neighbours by cosine similarity, in chunks (a torch matmul; rows are unit length).

Exact search costs N x M x D multiply-adds: seconds for tens of thousands of images on a CPU. The
first pass of duplicate search and the outlier score both use it.
"""

from __future__ import annotations

import numpy as np
import torch

CHUNK = 2048


def unit_rows(x: np.ndarray) -> np.ndarray:
    """Rows centred and scaled to unit length (cosine similarity = Pearson correlation of the rows)."""
    x = np.asarray(x, dtype=np.float32).reshape(len(x), -1)
    x = x - x.mean(1, keepdims=True)
    return x / np.linalg.norm(x, axis=1, keepdims=True).clip(min=1e-6)


def nearest(queries: np.ndarray, base: np.ndarray, k: int, same: bool = False,
            chunk: int = CHUNK) -> tuple[np.ndarray, np.ndarray]:
    """The `k` rows of `base` most similar to each query row: (indices Q x k, similarities Q x k), best
    first. `same`: queries and base are one set, so a row is never its own neighbour."""
    k = min(k, len(base) - (1 if same else 0))
    if k <= 0 or not len(queries):
        return np.zeros((len(queries), 0), np.int64), np.zeros((len(queries), 0), np.float32)
    base_t = torch.from_numpy(np.ascontiguousarray(base, dtype=np.float32))
    indices, sims = [], []
    for start in range(0, len(queries), chunk):
        block = torch.from_numpy(np.ascontiguousarray(queries[start:start + chunk], dtype=np.float32)) @ base_t.T
        if same:
            rows = torch.arange(len(block))
            block[rows, rows + start] = -float("inf")
        top = block.topk(k, dim=1)
        indices.append(top.indices.numpy())
        sims.append(top.values.numpy())
    return np.concatenate(indices), np.concatenate(sims)
