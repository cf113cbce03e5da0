"""Evaluation under DDP that counts every image exactly once.

Lightning gives each rank a `DistributedSampler`, which pads an uneven split with repeated images so
all ranks run the same number of batches; validation and test metrics would then count those
images twice. An evaluation loader built here carries Lightning's `UnrepeatedDistributedSampler`
instead (ranks get disjoint slices, at most one image apart), and Lightning keeps a sampler that is
already a `DistributedSampler`. The metrics' states (torchmetrics) and the batch-size-weighted
`self.log(..., sync_dist=True)` means are summed over ranks, so uneven slices give exact values.
"""

from __future__ import annotations

import torch.distributed as dist
from pytorch_lightning.overrides.distributed import UnrepeatedDistributedSampler
from torch.utils.data import Dataset, Sampler


def world() -> tuple[int, int]:
    """(world size, rank) of the initialised process group, or (1, 0)."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size(), dist.get_rank()
    return 1, 0


def eval_sampler(dataset: Dataset, split: str) -> Sampler | None:
    """An unpadded per-rank sampler for an evaluation split under DDP; None in one process."""
    size, rank = world()
    if size == 1:
        return None
    if 0 < len(dataset) < size:
        raise ValueError(f"The {split} split has {len(dataset)} image(s) for {size} processes; every process "
                         "needs at least one. Use fewer devices (trainer.devices) or a larger split "
                         "(data.val_fraction / data.test_fraction).")
    return UnrepeatedDistributedSampler(dataset, num_replicas=size, rank=rank, shuffle=False)
