"""Collect what the report needs during the test pass itself, so it costs no second pass.

`TestOutputsCallback` keeps, for classification, the logits, targets and dataset indices of every
test sample (the task's `test_step` returns its logits); for segmentation, a pixel confusion matrix
(`test_step` returns the predicted class ids). Under DDP the ranks' outputs are gathered, and
DistributedSampler's padding repeats are dropped by dataset index.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pytorch_lightning as pl
import torch


@dataclass
class TestOutputs:
    """One test pass, in dataset order (classification) or as pixel counts (segmentation)."""

    task: str
    indices: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    logits: np.ndarray = field(default_factory=lambda: np.zeros((0, 0), np.float32))
    targets: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    confusion: np.ndarray | None = None


def sampler_order(dataloader) -> list[int] | None:
    """The dataset indices a loader visits, in order (its sampler is deterministic at test time); None for a
    streamed (iterable) dataset, which yields its items in order in one process."""
    if isinstance(getattr(dataloader, "dataset", None), torch.utils.data.IterableDataset):
        return None
    batch_sampler = getattr(dataloader, "batch_sampler", None)
    if batch_sampler is None:
        sampler = getattr(dataloader, "sampler", None)
        return None if sampler is None else [int(i) for i in sampler]
    return [int(i) for batch in batch_sampler for i in batch]


def gather_rows(pl_module: pl.LightningModule, rows: torch.Tensor) -> torch.Tensor:
    """All ranks' rows concatenated (ranks may hold different counts)."""
    if pl_module.trainer.world_size == 1:
        return rows
    count = torch.tensor([rows.shape[0]], device=pl_module.device)
    counts = pl_module.all_gather(count).reshape(-1).tolist()
    padded = torch.zeros((max(counts), *rows.shape[1:]), dtype=rows.dtype, device=pl_module.device)
    padded[: rows.shape[0]] = rows.to(pl_module.device)
    stacked = pl_module.all_gather(padded)
    return torch.cat([stacked[r, :n] for r, n in enumerate(counts)]).cpu()


class TestOutputsCallback(pl.Callback):
    """Gather the test pass's outputs; `outputs` is set on every rank after `trainer.test`."""

    def __init__(self) -> None:
        self.outputs: TestOutputs | None = None
        self._rows: list[tuple[torch.Tensor, torch.Tensor]] = []
        self._order: list[int] | None = None
        self._confusion: torch.Tensor | None = None

    def on_test_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.outputs, self._rows, self._confusion = None, [], None
        loaders = trainer.test_dataloaders
        loader = loaders[0] if isinstance(loaders, (list, tuple)) else loaders
        self._order = sampler_order(loader)

    def on_test_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs, batch,
                          batch_idx: int, dataloader_idx: int = 0) -> None:
        if dataloader_idx or not torch.is_tensor(outputs):
            return
        target = batch[1]
        if outputs.ndim == 2:  # classification logits N x C
            self._rows.append((outputs.detach().float().cpu(), target.detach().cpu()))
            return
        num_classes = len(getattr(pl_module, "class_names", [])) or int(outputs.max()) + 1
        valid = target != getattr(pl_module, "ignore_index", -1)
        pairs = target[valid].long() * num_classes + outputs[valid].long()
        counts = torch.bincount(pairs, minlength=num_classes * num_classes).reshape(num_classes, num_classes)
        self._confusion = counts if self._confusion is None else self._confusion + counts

    def on_test_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._confusion is not None:
            total = self._confusion.to(pl_module.device)
            if trainer.world_size > 1:
                total = trainer.strategy.reduce(total, reduce_op="sum")
            self.outputs = TestOutputs("segmentation", confusion=total.cpu().numpy().astype(np.int64))
        elif self._rows:
            self.outputs = self._classification(pl_module)
        self._rows, self._confusion = [], None

    def _classification(self, pl_module: pl.LightningModule) -> TestOutputs:
        logits = torch.cat([r[0] for r in self._rows])
        targets = torch.cat([r[1] for r in self._rows]).long()
        seen = len(targets)
        order = self._order if self._order is not None and len(self._order) >= seen else range(seen)
        indices = torch.as_tensor(list(order)[:seen], dtype=torch.long)
        logits, targets = gather_rows(pl_module, logits), gather_rows(pl_module, targets)
        indices = gather_rows(pl_module, indices).numpy()
        unique, first = np.unique(indices, return_index=True)  # sorted; drops DDP padding repeats
        return TestOutputs(getattr(pl_module, "kind", "classification"), indices=unique.astype(np.int64),
                           logits=logits.numpy()[first].astype(np.float32),
                           targets=targets.numpy()[first].astype(np.int64))
