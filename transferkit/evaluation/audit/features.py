"""One frozen pass over every image: the backbone's pooled features, and the model input shrunk to a
32 x 32 grey image (what near duplicates are verified on), from the same batches."""

from __future__ import annotations

import logging

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import ConcatDataset

from transferkit.data.feature_store import extract_features
from transferkit.data.loader_settings import loader_settings
from transferkit.data.sources import TransformedDataset
from transferkit.evaluation.audit.images import AuditImages
from transferkit.evaluation.measure import frozen_backbones
from transferkit.planning.spec import RunSpec

log = logging.getLogger("transferkit")

TINY_SIDE = 32


def tiny_grey(batch: torch.Tensor, side: int = TINY_SIDE) -> torch.Tensor:
    """N x C x H x W model inputs as N x side x side grey images (area-averaged, or upsampled if smaller)."""
    grey = batch.float().mean(1, keepdim=True)
    if grey.shape[-1] >= side and grey.shape[-2] >= side:
        return F.adaptive_avg_pool2d(grey, side)[:, 0]
    return F.interpolate(grey, size=(side, side), mode="bilinear", align_corners=False)[:, 0]


def frozen_features(spec: RunSpec, datamodule, images: AuditImages) -> tuple[np.ndarray, np.ndarray]:
    """Unit-length features (N x D float32) and tiny grey inputs (N x 32 x 32 float32), in table order."""
    backbone, _ = frozen_backbones(spec.model, spec.seed, twin=False)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    backbone.to(device)
    transform = datamodule.transform(train=False)
    # Workers decode files in parallel; images already in memory are faster without them.
    workers = loader_settings(spec.data.get("num_workers", 0), None)["num_workers"] if images.files else 0
    tiny = []

    def keep_tiny(batch: torch.Tensor) -> torch.Tensor:
        tiny.append(tiny_grey(batch).cpu())
        return batch

    every = ConcatDataset([TransformedDataset(source, transform) for source in images.sources.values()])
    found, _ = extract_features(backbone, every, lambda n, dim: np.empty((n, dim), dtype=np.float32),
                                spec.data.batch_size, workers, convert_input=keep_tiny)
    stacked = np.asarray(found, dtype=np.float32)
    stacked /= np.linalg.norm(stacked, axis=1, keepdims=True).clip(min=1e-12)
    log.info("audit: %d features of dim %d (%s)", *stacked.shape, spec.model.backbone)
    return stacked, torch.cat(tiny).numpy()
