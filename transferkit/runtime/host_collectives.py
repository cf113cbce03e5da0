"""Small agreements between DDP ranks made on the host, between training steps.

A collective on the GPU (NCCL) whose result the host then reads waits for every kernel queued before
it: done after every step, it keeps the host from running ahead of the GPU. A gloo process group
over the same ranks agrees on a flag with a few bytes over the host network instead.
"""

from __future__ import annotations

import torch
import torch.distributed as dist


def host_group():
    """A gloo group of all ranks; every rank must call this, in the same order (e.g. in on_train_start)."""
    return dist.new_group(backend="gloo")


def any_rank(flag: bool, group) -> bool:
    """True on every rank when `flag` is true on some rank."""
    value = torch.tensor([int(flag)], dtype=torch.int32)
    dist.all_reduce(value, op=dist.ReduceOp.MAX, group=group)
    return bool(int(value))


def rank_zero_says(flag: bool, group) -> bool:
    """Rank 0's `flag`, on every rank."""
    value = torch.tensor([int(flag)], dtype=torch.int32)
    dist.broadcast(value, src=0, group=group)
    return bool(int(value))


def release(group) -> None:
    if group is not None and dist.is_initialized():
        dist.destroy_process_group(group)


class HostGroup:
    """A callback's host group for one fit: `open` in `on_train_start` (every rank, multi-rank runs
    only), `close` in `teardown`; `active` while it is open."""

    def __init__(self) -> None:
        self.group = None

    @property
    def active(self) -> bool:
        return self.group is not None

    def open(self, world_size: int) -> None:
        if world_size > 1 and self.group is None:
            self.group = host_group()

    def any_rank(self, flag: bool) -> bool:
        return any_rank(flag, self.group)

    def rank_zero_says(self, flag: bool) -> bool:
        return rank_zero_says(flag, self.group)

    def close(self) -> None:
        release(self.group)
        self.group = None
