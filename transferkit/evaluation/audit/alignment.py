"""How far apart two images are once a crop and a brightness change are undone: the verification of a
near-duplicate candidate pair, on the 32 x 32 grey images of the feature pass.

For a pair (X, Y), Y's grey levels are first mapped onto X's (histogram matching: any brightness,
contrast or gamma change undone); then every crop of X on a grid (each side cut by 0 to 6 %, x and y
apart) is resampled to 32 x 32 and correlated with Y, and the other way round. The distance is 1 - the
best correlation: about 0 for copies that were resized, re-encoded, brightened or slightly cropped,
higher for different images however alike. A coarse grid (3 cuts a side) sorts out the pairs that are
far apart; the close ones are searched again on the fine grid (5 cuts a side). The grid's correlations
come from a few matrix products (resampling is separable), not from warping each image once per crop.
"""

from __future__ import annotations

import numpy as np
import torch

from transferkit.tasks.head_solver import threads_for

CROPS: tuple[float, ...] = (0.0, 0.015, 0.03, 0.045, 0.06)  # fraction cut from each side
COARSE: tuple[float, ...] = (0.0, 0.03, 0.06)  # the first, cheap grid (9 instead of 25 crops per image)
REFINE_BELOW = 0.03  # pairs whose coarse distance is at most this are searched on the fine grid
BATCH = 256


def crop_matrices(side: int, crops: tuple[float, ...] = CROPS) -> torch.Tensor:
    """K x side x side bilinear resampling matrices, one per (start cut, end cut) of one axis."""
    j = torch.arange(side, dtype=torch.float32)
    mats = []
    for start in crops:
        for end in crops:
            x = (start * side + (j + 0.5) * (1 - start - end) - 0.5).clamp(0, side - 1)
            mats.append(torch.relu(1 - (x[:, None] - j[None, :]).abs()))
    return torch.stack(mats)


def match_histogram(source: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """Each row of `source` (P x N) with the grey levels of the same row of `reference`, in rank order."""
    order = source.argsort(dim=1)
    return torch.empty_like(source).scatter_(1, order, reference.sort(dim=1).values)


def best_crop_distance(x: torch.Tensor, y: torch.Tensor, mats: torch.Tensor) -> torch.Tensor:
    """min over crops (R_l X R_k^T) of 1 - corr(crop, Y), for P pairs of side x side images."""
    p, side = x.shape[0], x.shape[-1]
    n, k = side * side, len(mats)
    yc = y - y.mean(dim=(1, 2), keepdim=True)
    y_norm = yc.flatten(1).norm(dim=1)
    cols = mats.transpose(1, 2).permute(1, 0, 2).reshape(side, k * side)            # [R_0^T | R_1^T | ...]
    z = (x.reshape(p * side, side) @ cols).reshape(p, side, k, side).permute(0, 2, 1, 3)  # X R_k^T
    v = (mats.transpose(1, 2).reshape(k * side, side) @ yc.permute(1, 0, 2).reshape(side, p * side))
    v = v.reshape(k, side, p, side).permute(2, 0, 1, 3)                               # R_l^T Yc
    dot = z.reshape(p, k, n) @ v.reshape(p, k, n).transpose(1, 2)                     # <R_l Z_k, Yc>
    gram = mats.transpose(1, 2) @ mats                                               # R_l^T R_l
    square = ((z @ z.transpose(2, 3)).reshape(p * k, n) @ gram.reshape(k, n).T).reshape(p, k, k)
    total = (z.sum(3).reshape(p * k, side) @ mats.sum(1).T).reshape(p, k, k)          # sum(R_l Z_k)
    spread = (square - total * total / n).clamp_min(1e-9).sqrt()
    return 1 - (dot / (spread * y_norm[:, None, None] + 1e-6)).flatten(1).max(dim=1).values


def grid_distances(images: torch.Tensor, pairs: np.ndarray, crops: tuple[float, ...], batch: int) -> torch.Tensor:
    """The distance of each pair on one crop grid, both ways round (each image may be the crop of the other)."""
    mats = crop_matrices(images.shape[-1], crops)
    out = []
    for start in range(0, len(pairs), batch):
        a, b = images[pairs[start:start + batch, 0]], images[pairs[start:start + batch, 1]]
        flat_a, flat_b = a.flatten(1), b.flatten(1)
        b_as_a = match_histogram(flat_b, flat_a).view_as(b)
        a_as_b = match_histogram(flat_a, flat_b).view_as(a)
        out.append(torch.minimum(best_crop_distance(a, b_as_a, mats), best_crop_distance(b, a_as_b, mats)))
    return torch.cat(out)


def aligned_distances(tiny: np.ndarray, pairs: np.ndarray, batch: int = BATCH) -> np.ndarray:
    """The distance of each pair `(a, b)` of `tiny` (N x side x side grey images): the coarse grid for
    all, the fine grid where the coarse one comes close."""
    if not len(pairs):
        return np.zeros(0, dtype=np.float32)
    images = torch.from_numpy(np.ascontiguousarray(tiny, dtype=np.float32))
    # Many small matrix products: one thread is faster than several (as for the head solver's steps).
    with torch.inference_mode(), threads_for(batch * len(CROPS) ** 2 * images[0].numel()):
        distance = grid_distances(images, pairs, COARSE, batch)
        close = torch.nonzero(distance <= REFINE_BELOW).flatten()
        if len(close):
            fine = grid_distances(images, pairs[close.numpy()], CROPS, batch)
            distance[close] = torch.minimum(distance[close], fine)
    return distance.numpy()
