"""Semantic segmentation: an FCN-32s/16s/8s head on a timm feature backbone.

Loss: cross-entropy (``ignore_index``, optional class weights) plus an optional soft-Dice term.
Metrics come from one confusion matrix per stage: mIoU over the classes that occur, per-class IoU
and pixel accuracy, logged as ``val/miou``, ``val/pixel_acc``, ``test/iou_<class>``, ...
"""

from __future__ import annotations

import logging
import re

import torch
import torch.nn.functional as F
from torchmetrics.classification import MulticlassConfusionMatrix

from transferkit.errors import ConfigError
from transferkit.models.fcn import create_segmentation_model, fcn_forward
from transferkit.tasks.base import BaseTask, build_eval_losses
from transferkit.tasks.tta import resize_scores

log = logging.getLogger(__name__)

MODEL_DEFAULTS = {"backbone": "resnet10t", "weights": "none", "in_chans": 3, "head": "fcn8s",
                  "learnable_upsampling": True, "drop_rate": 0.0, "drop_path_rate": 0.0, "cache_dir": None,
                  "channels_last": False, "compile": False, "compile_mode": None}
# Classification-only keys the shared `model` group may carry; segmentation ignores them.
CLASSIFIER_KEYS = {"dropout", "hidden_dim", "init", "spatial_dropout"}


def scores_from_confusion(confmat: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(per-class IoU, mIoU, pixel accuracy)`` from a ``C x C`` (truth x prediction) matrix.

    A class absent from both truth and prediction has IoU NaN and does not count in the mean.
    """
    confmat = confmat.double()
    hits = confmat.diag()
    union = confmat.sum(0) + confmat.sum(1) - hits
    iou = torch.where(union > 0, hits / union.clamp(min=1), torch.full_like(hits, float("nan")))
    miou = iou[~iou.isnan()].mean() if (~iou.isnan()).any() else torch.zeros((), dtype=confmat.dtype)
    pixel_acc = hits.sum() / confmat.sum().clamp(min=1)
    return iou.float(), miou.float(), pixel_acc.float()


def soft_dice_loss(logits: torch.Tensor, target: torch.Tensor, ignore_index: int) -> torch.Tensor:
    """1 - mean over classes present in the batch of the soft Dice score; ignored pixels drop out."""
    num_classes = logits.shape[1]
    valid = (target != ignore_index).unsqueeze(1)
    probs = logits.softmax(dim=1) * valid
    onehot = F.one_hot(target.where(valid.squeeze(1), 0), num_classes).permute(0, 3, 1, 2) * valid
    dims = (0, 2, 3)
    intersection = (probs * onehot).sum(dims)
    total = probs.sum(dims) + onehot.sum(dims)
    present = onehot.sum(dims) > 0
    dice = (2 * intersection + 1.0) / (total + 1.0)
    return 1 - dice[present].mean() if present.any() else logits.sum() * 0


def metric_name(class_name: str) -> str:
    """``"traffic light"`` -> ``"traffic_light"`` so it can sit in ``test/iou_<class>``."""
    return re.sub(r"[^0-9A-Za-z_]+", "_", class_name).strip("_") or "class"


class SegmentationTask(BaseTask):
    """FCN segmentation; reloads with ``SegmentationTask.load_from_checkpoint(path)`` (no Hydra)."""

    kind = "segmentation"  # task.kind: what predict, export and the ensemble ask, never the class name
    monitor = "val/miou"
    monitor_mode = "max"

    def __init__(self, num_classes: int, class_names: list[str] | None = None,
                 model: dict | None = None, finetune: dict | None = None,
                 optimizer: dict | None = None, scheduler: dict | None = None,
                 ignore_index: int = 255, dice_weight: float = 0.0,
                 class_weights: list[float] | None = None, data_config: dict | None = None,
                 grid_samples: int = 4, regularization: dict | None = None,
                 schedule_epochs: int | None = None, monitor: str | None = None) -> None:
        super().__init__(finetune=finetune, optimizer=optimizer, scheduler=scheduler,
                         regularization=regularization, schedule_epochs=schedule_epochs, monitor=monitor)
        self.save_hyperparameters()
        spec = self._model_spec(model)
        if self.plan.probes_first:
            raise ConfigError(f"finetune.head_solver={self.plan.head_solver!r}, finetune.lpft={self.plan.lpft!r}: "
                              "a solved linear head is for classification; segmentation trains its FCN "
                              "decoder by SGD. Set finetune.head_solver=sgd and finetune.lpft=false.")
        if num_classes < 2:
            raise ValueError(f"num_classes={num_classes!r}: segmentation needs at least 2 classes "
                             "(background included).")
        if class_weights is not None and len(class_weights) != num_classes:
            raise ValueError(f"task.class_weights has {len(class_weights)} values for {num_classes} "
                             "classes; give one weight per class or null.")
        if dice_weight < 0:
            raise ValueError(f"task.dice_weight={dice_weight!r} must be >= 0.")
        self.class_names = list(class_names) if class_names else [str(i) for i in range(num_classes)]
        net = create_segmentation_model(
            spec["backbone"], num_classes, head=spec["head"], in_chans=spec["in_chans"],
            learnable_upsampling=spec["learnable_upsampling"], drop_rate=spec["drop_rate"],
            drop_path_rate=spec["drop_path_rate"])
        self.encoder, self.head, self.feature_indices = net.encoder, net.decoder, net.feature_indices
        self.setup_finetuning()
        self.setup_speed(spec["channels_last"], spec["compile"], spec["compile_mode"])
        weights = torch.tensor(class_weights, dtype=torch.float32) if class_weights else None
        self.register_buffer("class_weights", weights, persistent=False)
        self.ignore_index, self.dice_weight = ignore_index, dice_weight
        # `grid_samples` (task.grid_samples) stays a saved hyperparameter only: the preview grid is
        # drawn by reports.seg_grid.SegmentationGridCallback, which the trainer builder configures.
        self.data_config = dict(data_config or {})
        self.val_confusion = MulticlassConfusionMatrix(num_classes, ignore_index=ignore_index)
        self.test_confusion = MulticlassConfusionMatrix(num_classes, ignore_index=ignore_index)
        self.eval_losses = build_eval_losses()  # exact over uneven DDP ranks

    @staticmethod
    def _model_spec(model: dict | None) -> dict:
        model = {k: v for k, v in (model or {}).items() if v is not None or k not in MODEL_DEFAULTS}
        unknown = set(model) - set(MODEL_DEFAULTS) - CLASSIFIER_KEYS
        if model.get("spatial_dropout"):
            raise ConfigError(f"model.spatial_dropout={model['spatial_dropout']!r} acts before a classifier's "
                              "pooling; segmentation has none. Set model.spatial_dropout=0.")
        if unknown:
            raise TypeError(f"model.{sorted(unknown)[0]} is not a segmentation model option; "
                            f"use {sorted(MODEL_DEFAULTS)}.")
        return {**MODEL_DEFAULTS, **{k: v for k, v in model.items() if k in MODEL_DEFAULTS}}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits ``N x num_classes x H x W`` for images ``N x C x H x W`` of any size."""
        return fcn_forward(self.encoder, self.head, self.feature_indices, self.prepare_input(x))

    def loss(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        loss = F.cross_entropy(logits, target, weight=self.class_weights, ignore_index=self.ignore_index)
        if (target == self.ignore_index).all():
            loss = logits.sum() * 0  # cross-entropy over zero pixels is NaN
        if self.dice_weight:
            loss = loss + self.dice_weight * soft_dice_loss(logits, target, self.ignore_index)
        return loss

    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        x, y = batch
        loss = self.loss(self(x), y)
        self.log("train/loss", loss, on_step=True, on_epoch=True, prog_bar=True, batch_size=x.shape[0])
        return self.regularized(loss, x.shape[0])

    def _eval_step(self, batch, confusion: MulticlassConfusionMatrix, stage: str) -> torch.Tensor:
        x, y = batch
        logits = self(x)
        mean_loss = self.eval_losses[stage]
        mean_loss.update(self.loss(logits, y), weight=x.shape[0])
        self.log(f"{stage}/loss", mean_loss, on_epoch=True, prog_bar=stage == "val", batch_size=x.shape[0])
        preds = logits.argmax(dim=1)
        confusion.update(preds, y)
        return preds

    def _log_scores(self, confusion: MulticlassConfusionMatrix, stage: str) -> None:
        iou, miou, pixel_acc = scores_from_confusion(confusion.compute())
        scores = {f"{stage}/pixel_acc": pixel_acc}
        for name, value in zip(self.class_names, iou):
            if not value.isnan():
                scores[f"{stage}/iou_{metric_name(name)}"] = value
        self.log(f"{stage}/miou", miou, prog_bar=True)
        self.log_dict(scores)
        confusion.reset()

    def validation_step(self, batch, batch_idx: int) -> torch.Tensor:
        """Predicted class ids ``N x H x W``, handed to callbacks (e.g. the preview grid)."""
        return self._eval_step(batch, self.val_confusion, "val")

    def on_validation_epoch_end(self) -> None:
        self._log_scores(self.val_confusion, "val")

    def test_step(self, batch, batch_idx: int) -> torch.Tensor:
        """Predicted class ids ``N x H x W``, handed to callbacks (the run report counts them)."""
        return self._eval_step(batch, self.test_confusion, "test")

    def on_test_epoch_end(self) -> None:
        self._log_scores(self.test_confusion, "test")

    def predict_step(self, batch, batch_idx: int) -> torch.Tensor:
        """Per-image index masks ``N x H x W`` (``int64`` class ids)."""
        x = batch[0] if isinstance(batch, (list, tuple)) else batch
        return self(x).argmax(dim=1)

    @torch.no_grad()
    def predict_mask(self, x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        """Class ids ``N x H x W`` at ``size`` for preprocessed images ``N x C x h x w``.

        The logits are resized bilinearly to ``size`` (the images' own size) before the argmax.
        """
        return resize_scores(self(x.to(self.device)), size).argmax(dim=1)
