"""Ensembles: several trained tasks (e.g. the folds of a `cv` run) averaging their probabilities.

Each member sees the batch in its own preprocessing (`views[i]` is the batch prepared with member
i's image size, mean and std); classification averages the softmax outputs, segmentation the
per-pixel probabilities on the first member's pixels. Test-time augmentation (`transferkit.tasks.tta`)
applies per member, before the average.
"""

from __future__ import annotations

from collections.abc import Sequence

import pytorch_lightning as pl
import torch
import torch.nn as nn
import torch.nn.functional as F

from transferkit.tasks.calibration import apply_temperature
from transferkit.tasks.tta import check_tta, resize_scores, tta_probabilities
from transferkit.data.multilabel import multi_hot
from transferkit.tasks.classification import build_metrics
from transferkit.tasks.multilabel import build_class_ap, build_multilabel_metrics
from transferkit.tasks.segmentation import metric_name, scores_from_confusion


def average_probabilities(probabilities: Sequence[torch.Tensor]) -> torch.Tensor:
    """The members' probabilities averaged with equal weights."""
    if not probabilities:
        raise ValueError("an ensemble needs at least one member.")
    return torch.stack([p.float() for p in probabilities]).mean(dim=0)


class EnsembleTask(pl.LightningModule):
    """Trained tasks of one kind and one class list, evaluated together (`test`, `predict`, `cv`).

    Args:
        members: loaded tasks (`transferkit.tasks.loading.load_ensemble` checks their class lists).
        tta: `none`, `flip` or `multiscale`, for every member or one per member (`load_ensemble`
            gives `none` to a member a view does not suit: `flip` for one trained without flips).
        thresholds: multi-label decision thresholds tuned for this ensemble (a `finetune=auto` run's,
            from `checkpoints/ensemble.json`); None: the members' own, averaged.
    """

    def __init__(self, members: Sequence[nn.Module], tta: str | Sequence[str] = "none",
                 thresholds: Sequence[float] | None = None) -> None:
        super().__init__()
        self.tuned_thresholds = [float(t) for t in thresholds] if thresholds is not None else None
        if not members:
            raise ValueError("an ensemble needs at least one member.")
        self.members = nn.ModuleList(members)
        modes = [tta] * len(members) if isinstance(tta, str) else list(tta)
        if len(modes) != len(members):
            raise ValueError(f"{len(modes)} tta modes for {len(members)} members.")
        self.tta = [check_tta(mode) for mode in modes]
        first = members[0]
        self.class_names = list(first.class_names)
        self.kind = str(first.kind)
        self.segmentation = self.kind == "segmentation"
        self.ignore_index = int(getattr(first, "ignore_index", -100)) if self.segmentation else -100
        num_classes = len(self.class_names)
        if self.segmentation:
            from torchmetrics.classification import MulticlassConfusionMatrix

            self.test_confusion = MulticlassConfusionMatrix(num_classes, ignore_index=self.ignore_index)
        elif self.multilabel:
            self.test_metrics = build_multilabel_metrics(num_classes).clone(prefix="test/")
            self.test_class_ap = build_class_ap(num_classes)  # test/ap_<class>, as a single model reports
        else:
            top_k = int(first.hparams.get("top_k", 5))
            self.test_metrics = build_metrics(num_classes, top_k).clone(prefix="test/")

    @property
    def multilabel(self) -> bool:
        return self.kind == "multilabel"

    @property
    def thresholds(self) -> list[float] | None:
        """Multi-label: the ensemble's own tuned thresholds, else the members' averaged per class (a member
        without: 0.5)."""
        if self.multilabel and self.tuned_thresholds is not None:
            return list(self.tuned_thresholds)
        if not self.multilabel or all(m.thresholds is None for m in self.members):
            return None
        rows = [m.thresholds or [0.5] * len(self.class_names) for m in self.members]
        return torch.tensor(rows, dtype=torch.float64).mean(0).tolist()

    def probabilities(self, views: Sequence[torch.Tensor], size: tuple[int, int] | None = None,
                      calibration: str = "none") -> torch.Tensor:
        """Averaged probabilities: N x C, or N x C x H x W at `size` (default: the first view's pixels).
        `calibration=temperature`: each member's logits divided by its own temperature (predict; `test`
        and `cv` score the raw outputs)."""
        outputs = []
        for member, x, mode in zip(self.members, views, self.tta):
            temperature = member.temperature if calibration == "temperature" else None
            forward = member if temperature is None else (lambda v, m=member, t=temperature: apply_temperature(m(v), t))
            probs = tta_probabilities(forward, x.to(self.device), mode, True, self.segmentation, self.multilabel)
            if self.segmentation:
                target = tuple(size or views[0].shape[-2:])
                if probs.shape[-2:] != target:
                    probs = resize_scores(probs, target)
            outputs.append(probs)
        return average_probabilities(outputs)

    def test_step(self, batch, batch_idx: int) -> torch.Tensor:
        """The ensemble's test metrics; returns what the run report collects, as a single task's test_step
        does (`evaluation.reports.test_outputs`): scores whose softmax (sigmoid, multi-label) is the averaged
        probability, or the predicted class ids (segmentation)."""
        views, y = batch
        probs = self.probabilities(views)
        if self.multilabel:
            target = multi_hot(y, len(self.class_names))
            loss = F.binary_cross_entropy(probs.clamp(1e-7, 1 - 1e-7), target)
            self.log("test/loss", loss, on_epoch=True, sync_dist=True, batch_size=y.shape[0])
            self.test_metrics.update(probs, target.long())
            self.test_class_ap.update(probs, target.long())
            self.log_dict(self.test_metrics, on_epoch=True, batch_size=y.shape[0])
            return torch.logit(probs.double().clamp(1e-12, 1 - 1e-12)).float()
        log_probs = torch.log(probs.clamp_min(1e-12))
        loss = F.nll_loss(log_probs, y, ignore_index=self.ignore_index)
        self.log("test/loss", loss, on_epoch=True, sync_dist=True, batch_size=y.shape[0])
        if self.segmentation:
            predicted = probs.argmax(dim=1)
            self.test_confusion.update(predicted, y)
            return predicted
        self.test_metrics.update(probs, y)
        self.log_dict(self.test_metrics, on_epoch=True, batch_size=y.shape[0])
        return log_probs

    def on_test_epoch_end(self) -> None:
        if self.multilabel:
            values = self.test_class_ap.compute()
            self.log_dict({f"test/ap_{metric_name(name)}": value
                           for name, value in zip(self.class_names, values) if not value.isnan()})
            self.test_class_ap.reset()
        if not self.segmentation:
            return

        iou, miou, pixel_acc = scores_from_confusion(self.test_confusion.compute())
        scores = {"test/miou": miou, "test/pixel_acc": pixel_acc}
        scores.update({f"test/iou_{metric_name(name)}": value
                       for name, value in zip(self.class_names, iou) if not value.isnan()})
        self.log_dict(scores)
        self.test_confusion.reset()
