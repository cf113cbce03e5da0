"""Batch indices for datasets whose tensors live on the training device (synthetic data, GPU-resident
features): the index list goes over in pinned memory without blocking, so building a batch never waits
for the GPU to catch up with the queued training steps."""

from __future__ import annotations

import torch


def device_index(indices, device: torch.device) -> torch.Tensor:
    """`indices` (a list or 1-D array of ints) as an int64 tensor on `device`."""
    index = torch.as_tensor(indices, dtype=torch.long)
    if device.type == "cuda":
        return index.pin_memory().to(device, non_blocking=True)
    return index.to(device)
