"""Class imbalance: loss weights and a weighted sampler that still shards correctly under DDP."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
from lightning_fabric.utilities.distributed import DistributedSamplerWrapper

from transferkit.data.balance import build_weighted_sampler, class_weights, count_labels

# 1:100 imbalance: 300 of class 0, 3 of class 1; class 2 has no images.
LABELS = np.array([0] * 300 + [1] * 3)


def test_count_labels_and_range_check() -> None:
    assert count_labels(LABELS, 3).tolist() == [300, 3, 0]
    with pytest.raises(ValueError, match=r"Labels must lie in 0..1; got 0..2"):
        count_labels([0, 2], 2)


def test_class_weights_are_inverse_frequency_with_unit_mean() -> None:
    weights = class_weights(LABELS, 3)
    assert weights.tolist() == pytest.approx([303 / 600, 303 / 6, 0.0])
    assert weights[LABELS].mean() == pytest.approx(1.0)


def test_sampler_balances_classes_and_is_seeded_per_epoch() -> None:
    sampler = build_weighted_sampler(LABELS, 3, seed=7)
    assert len(sampler) == 303
    first = list(sampler)
    assert first == list(sampler)
    drawn = Counter(int(LABELS[i]) for i in first)
    assert 120 <= drawn[1] <= 183  # about half of 303, never class-1 at its natural 1 %
    sampler.set_epoch(1)
    assert list(sampler) != first
    assert list(build_weighted_sampler(LABELS, 3, seed=8)) != first


def test_sampler_shards_disjointly_under_lightning_ddp_wrapper() -> None:
    sampler = build_weighted_sampler(LABELS, 3, seed=0)
    shards = []
    for rank in range(2):
        wrapper = DistributedSamplerWrapper(sampler, num_replicas=2, rank=rank, shuffle=True, seed=0)
        wrapper.set_epoch(3)
        shards.append(list(wrapper))
    assert sampler.epoch == 3  # the wrapper forwards set_epoch to our sampler
    assert [len(shard) for shard in shards] == [152, 152]
    # the two ranks take complementary positions of the same global draw
    global_draw = Counter(list(sampler))
    merged = Counter(shards[0]) + Counter(shards[1])
    padded = merged - global_draw
    assert sum(padded.values()) == 1 and not global_draw - merged


def test_empty_train_split_is_an_error() -> None:
    with pytest.raises(ValueError, match="data.balance=sampler needs training images"):
        build_weighted_sampler([], 2)
