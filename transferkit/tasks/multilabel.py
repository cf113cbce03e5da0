"""Multi-label image classification: one sigmoid per class, BCE with per-class positive weights.

A batch's targets arrive as label-set bitmasks (`transferkit.data.multilabel`) and become multi-hot rows
here. Validation and test log `map` (torchmetrics' macro average precision, the selection metric) and
macro F1 at 0.5; the test pass adds each class's AP (`test/ap_<class>`). The per-class decision
thresholds are tuned on validation after the fit (`transferkit.training.thresholds`) and stored in the
checkpoint; they change no weight and no AP.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torchmetrics import MetricCollection
from torchmetrics.classification import MultilabelAveragePrecision, MultilabelF1Score

from transferkit.data.multilabel import multi_hot
from transferkit.errors import ConfigError
from transferkit.tasks.classification import ClassificationTask
from transferkit.tasks.segmentation import metric_name


def build_multilabel_metrics(num_classes: int) -> MetricCollection:
    """`map` (macro AP, ranking quality: no threshold) and `f1` (macro F1 at 0.5)."""
    return MetricCollection({"map": MultilabelAveragePrecision(num_classes, average="macro", thresholds=None),
                             "f1": MultilabelF1Score(num_classes, average="macro")}, compute_groups=False)


def build_class_ap(num_classes: int) -> MultilabelAveragePrecision:
    """Each class's AP (`test/ap_<class>`)."""
    return MultilabelAveragePrecision(num_classes, average=None, thresholds=None)


class MultilabelTask(ClassificationTask):
    """Several labels per image; reloads with `MultilabelTask.load_from_checkpoint`."""

    kind = "multilabel"
    monitor = "val/map"
    monitor_mode = "max"

    def __init__(self, num_classes: int, class_names: list[str] | None = None,
                 model: dict | None = None, finetune: dict | None = None,
                 optimizer: dict | None = None, scheduler: dict | None = None, top_k: int = 5,
                 pos_weight: list[float] | str | None = None, mixup_alpha: float = 0.0, cutmix_alpha: float = 0.0,
                 data_config: dict | None = None, regularization: dict | None = None,
                 schedule_epochs: int | None = None, monitor: str | None = None) -> None:
        if mixup_alpha or cutmix_alpha:
            raise ConfigError(f"augment.mixup_alpha={mixup_alpha!r}, augment.cutmix_alpha={cutmix_alpha!r}: mixing "
                              "images mixes label sets, which task=multilabel does not train on; set both to 0.")
        super().__init__(num_classes, class_names, model, finetune, optimizer, scheduler, top_k=top_k,
                         data_config=data_config, regularization=regularization,
                         schedule_epochs=schedule_epochs, monitor=monitor)
        self.save_hyperparameters()
        pos_weight = None if isinstance(pos_weight, str) else pos_weight  # "auto"/"none" unresolved: unweighted
        if pos_weight is not None and len(pos_weight) != num_classes:
            raise ValueError(f"pos_weight has {len(pos_weight)} values for {num_classes} classes.")
        weights = torch.tensor(pos_weight, dtype=torch.float32) if pos_weight else None
        self.register_buffer("pos_weight", weights, persistent=False)
        metrics = build_multilabel_metrics(num_classes)
        self.val_metrics = metrics.clone(prefix="val/")
        self.test_metrics = metrics.clone(prefix="test/")
        self.test_class_ap = build_class_ap(num_classes)

    def targets(self, y: torch.Tensor) -> torch.Tensor:
        """Bitmasks -> N x C float multi-hot rows (already multi-hot rows pass through)."""
        return y.float() if y.ndim == 2 else multi_hot(y, len(self.class_names))

    def loss(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return F.binary_cross_entropy_with_logits(logits.float(), self.targets(target), pos_weight=self.pos_weight)

    def _eval_step(self, batch, metrics: MetricCollection, stage: str) -> torch.Tensor:
        x, y = batch
        logits = self(x)
        target = self.targets(y)
        mean_loss = self.eval_losses[stage]
        mean_loss.update(F.binary_cross_entropy_with_logits(logits.float(), target), weight=x.shape[0])
        self.log(f"{stage}/loss", mean_loss, on_epoch=True, prog_bar=stage == "val", batch_size=x.shape[0])
        probs = torch.sigmoid(logits.float())
        metrics.update(probs, target.long())
        if stage == "test":
            self.test_class_ap.update(probs, target.long())
        self.log_dict(metrics, on_epoch=True, prog_bar=stage == "val", batch_size=x.shape[0])
        return logits

    def on_test_epoch_end(self) -> None:
        values = self.test_class_ap.compute()
        self.log_dict({f"test/ap_{metric_name(name)}": value
                       for name, value in zip(self.class_names, values) if not value.isnan()})
        self.test_class_ap.reset()

    def predict_step(self, batch, batch_idx: int) -> torch.Tensor:
        x = batch[0] if isinstance(batch, (list, tuple)) else batch
        return torch.sigmoid(self(x))
