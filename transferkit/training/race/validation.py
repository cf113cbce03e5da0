"""Validation in the `finetune=auto` race: the record each leg is scored on, and skipping the
validations of early legs that neither score nor choose a checkpoint."""

from __future__ import annotations

import pytorch_lightning as pl
import torch

from transferkit.planning.spec import RunSpec


class ValidationRecorder(pl.Callback):
    """Keeps every validation loss and accuracy of a candidate, and what the model predicted for each
    validation image in its last `keep_outputs` validations (the race scores legs on them).

    The predictions are the head's raw argmax, read by a forward hook on `pl_module.head` while it
    validates: nothing is computed twice and nothing is calibrated. A multi-label task (`kind`
    multilabel) keeps instead each image's per-class sigmoid scores at full float precision and its
    multi-hot target (`{"prob": [[...]], "target": [[0/1]]}`), and its `val/map` per validation
    (`maps`). Under DDP each rank's images are gathered, so every rank scores the same images. A task
    without a `head` records no outputs (the race then falls back to the accuracies)."""

    def __init__(self, keep_outputs: int | None = 2) -> None:
        self.losses: list[float] = []
        self.accs: list[float] = []
        self.maps: list[float] = []  # multi-label: val/map per validation
        self.outputs: list[dict[str, list]] = []  # per validation: {"pred": [...], "label": [...]}
        self.keep_outputs = keep_outputs
        self._batch: list[torch.Tensor] = []
        self._epoch: dict[str, list[torch.Tensor]] = {"pred": [], "label": []}
        self._hook = None
        self._multilabel = False

    def on_validation_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._multilabel = getattr(pl_module, "kind", "") == "multilabel"
        self._epoch = {"prob": [], "target": []} if self._multilabel else {"pred": [], "label": []}
        head = getattr(pl_module, "head", None)
        if not trainer.sanity_checking and isinstance(head, torch.nn.Module):
            self._hook = head.register_forward_hook(lambda _m, _i, out: self._batch.append(out.detach()))

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int, dataloader_idx: int = 0) -> None:
        if self._hook is not None and self._batch and self._multilabel:
            self._epoch["prob"].append(torch.sigmoid(self._batch[-1].float()).cpu())
            self._epoch["target"].append(pl_module.targets(batch[1].detach()).to(torch.int64).cpu())
        elif self._hook is not None and self._batch:
            self._epoch["pred"].append(self._batch[-1].argmax(dim=-1).cpu())
            self._epoch["label"].append(batch[1].detach().cpu())
        self._batch = []

    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        hooked, self._hook = self._hook, None
        if hooked is not None:
            hooked.remove()
        if trainer.sanity_checking or "val/loss" not in trainer.callback_metrics:
            return
        metrics = trainer.callback_metrics
        self.losses.append(float(metrics["val/loss"]))
        self.accs.append(float(metrics.get("val/acc", float("nan"))))
        if self._multilabel:
            self.maps.append(float(metrics.get("val/map", float("nan"))))
        if hooked is not None and next(iter(self._epoch.values())):
            record = {k: torch.cat(v).tolist() for k, v in self._epoch.items()}
            self.outputs.append(gathered(trainer, record))
            if self.keep_outputs is not None:
                self.outputs = self.outputs[-self.keep_outputs:]

    # Saved in the candidate's checkpoints, so a leg resumed in a later session scores the same.
    def state_dict(self) -> dict:
        state = {"losses": list(self.losses), "accs": list(self.accs), "outputs": list(self.outputs)}
        return {**state, "maps": list(self.maps)} if self.maps else state  # single-label: as before

    def load_state_dict(self, state_dict: dict) -> None:
        self.losses, self.accs = list(state_dict["losses"]), list(state_dict["accs"])
        self.outputs = list(state_dict.get("outputs", []))
        self.maps = list(state_dict.get("maps", []))


def gathered(trainer: pl.Trainer, record: dict[str, list]) -> dict[str, list]:
    """Every rank's validation predictions, in rank order (one process: as they are)."""
    if trainer.world_size <= 1 or not torch.distributed.is_available() or not torch.distributed.is_initialized():
        return record
    parts: list = [None] * trainer.world_size
    torch.distributed.all_gather_object(parts, record)
    return {key: [v for part in parts for v in part[key]] for key in record}


class ScoredEpochsOnly(pl.Callback):
    """Validate a non-final leg only at the epochs it is scored on, its last two (`race.leg_score`):
    the others would only offer best.ckpt an early epoch of a leg that does not finish the schedule.

    Lightning validates when (epoch + 1) is a multiple of `check_val_every_n_epoch`; this sets it per
    epoch. Training stays exactly as with every validation: a skipped validation's one draw from
    torch's random stream (its DataLoader iterator's base seed, with `data.num_workers=0`) is drawn.
    """

    def __init__(self, first: int) -> None:
        self.first = first  # 0-based index of the first epoch to validate

    def skips(self, epoch: int) -> bool:
        return epoch < self.first

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        epoch = trainer.current_epoch
        trainer.check_val_every_n_epoch = epoch + 2 if self.skips(epoch) else 1  # epoch + 1: no multiple

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.skips(trainer.current_epoch):
            torch.empty((), dtype=torch.int64).random_()  # what the val loader's iterator would draw


def validated_epochs_callbacks(spec: RunSpec, end: int, schedule_epochs: int) -> list[pl.Callback]:
    """`ScoredEpochsOnly` for a leg that stops before the schedule's end, unless validation steers
    training (early stopping, the plateau scheduler) or runs other than once per epoch in this
    process (`trainer.check_val_every_n_epoch`, `val_check_interval`, loader workers)."""
    trainer = spec.trainer
    plain = (trainer.get("check_val_every_n_epoch", 1) == 1 and trainer.get("val_check_interval") in (None, 1, 1.0)
             and not spec.callbacks.early_stopping.get("patience") and spec.scheduler.get("name") != "plateau"
             and str(spec.data.get("num_workers")) == "0")  # auto: workers, whose draws differ
    return [ScoredEpochsOnly(first=end - 2)] if plain and end - 2 > 0 and end < schedule_epochs else []
