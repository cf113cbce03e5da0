"""The evaluation split as an ensemble sees it: every sample prepared by each member's own pipeline."""

from __future__ import annotations

import torch
from torch.utils.data import DataLoader

from transferkit.data.loader_settings import choose_num_workers, usable_cpus
from transferkit.data.sources import ViewsDataset
from transferkit.inference.predictor import member_inputs


def eval_workers(requested) -> int:
    """`data.num_workers` (a number or `auto`) for an inference loader outside a Trainer."""
    return choose_num_workers(requested, on_gpu=torch.cuda.is_available(), cpus=usable_cpus())


def views_loader(ensemble, datamodule, batch_size: int, num_workers, split: str | None = None) -> DataLoader:
    """The test split (val when there is none, as `test_dataloader`; or `split`) in each member's
    preprocessing; `num_workers` as `data.num_workers` spells it."""
    split = split or ("test" if len(datamodule.sources.get("test", ())) else "val")
    channels, transforms = member_inputs(ensemble)
    dataset = ViewsDataset(datamodule.sources[split], transforms, channels, with_mask=ensemble.segmentation)
    return DataLoader(dataset, batch_size=int(batch_size), shuffle=False, num_workers=eval_workers(num_workers))
