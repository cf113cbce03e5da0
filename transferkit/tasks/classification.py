"""Image classification: a timm backbone (`num_classes=0`, global pooling) plus a new head."""

from __future__ import annotations

import logging

import torch
import torch.nn.functional as F
from torchmetrics import MetricCollection
from torchmetrics.classification import MulticlassAccuracy, MulticlassF1Score, MulticlassRecall

from transferkit.errors import ConfigError
from transferkit.models.backbones import create_backbone
from transferkit.models.heads import create_head, create_spatial_dropout, pooled_with_spatial_dropout
from transferkit.tasks.base import BaseTask, build_eval_losses
from transferkit.tasks.linear_probe import LinearProbeCallback
from transferkit.data.transforms import build_batch_mix

log = logging.getLogger(__name__)

# `weights` and `cache_dir` say where the backbone's first weights came from (planning loads them).
MODEL_DEFAULTS = {"backbone": "resnet10t", "weights": "none", "in_chans": 3, "dropout": 0.0,
                  "spatial_dropout": 0.0, "hidden_dim": None, "init": "kaiming", "drop_rate": 0.0, "drop_path_rate": 0.0,
                  "cache_dir": None, "channels_last": False, "compile": False, "compile_mode": None}


class ClassificationTask(BaseTask):
    """Classifier on a pretrained backbone; reloads with `ClassificationTask.load_from_checkpoint`."""

    kind = "classification"  # task.kind: what predict, export and the ensemble ask, never the class name
    monitor = "val/acc"
    monitor_mode = "max"

    def __init__(self, num_classes: int, class_names: list[str] | None = None,
                 model: dict | None = None, finetune: dict | None = None,
                 optimizer: dict | None = None, scheduler: dict | None = None,
                 label_smoothing: float = 0.0, top_k: int = 5,
                 class_weights: list[float] | None = None, mixup_alpha: float = 0.0,
                 cutmix_alpha: float = 0.0, data_config: dict | None = None,
                 regularization: dict | None = None,
                 schedule_epochs: int | None = None, monitor: str | None = None,
                 logit_adjust: bool = False, class_priors: list[float] | None = None) -> None:
        super().__init__(finetune=finetune, optimizer=optimizer, scheduler=scheduler,
                         regularization=regularization, schedule_epochs=schedule_epochs, monitor=monitor)
        self.save_hyperparameters()
        if num_classes < 2:
            raise ValueError(f"num_classes={num_classes!r}: classification needs at least 2 classes.")
        unknown = set(model or {}) - set(MODEL_DEFAULTS) - {"head"}
        if unknown:
            raise TypeError(f"model.{sorted(unknown)[0]} is not a classification model option; "
                            f"use {sorted(MODEL_DEFAULTS)}.")
        spec = {**MODEL_DEFAULTS, **(model or {})}
        if self.plan.probes_first and spec["hidden_dim"]:
            raise ConfigError(
                f"model.hidden_dim={spec['hidden_dim']!r}: finetune.head_solver=lbfgs (with finetune=freeze) "
                "and finetune.lpft=true solve a linear head, one nn.Linear on the backbone's features. Set "
                "model.hidden_dim=null, or finetune.head_solver=sgd and finetune.lpft=false.")
        # finetune.head_solver=lbfgs with finetune=freeze: the head is solved before the first epoch
        # (tasks/linear_probe.py) and training steps only report its loss.
        self.automatic_optimization = not self.plan.solves_head
        self.class_names = list(class_names) if class_names else [str(i) for i in range(num_classes)]
        self.encoder = create_backbone(spec["backbone"], in_chans=spec["in_chans"],
                                       drop_rate=spec["drop_rate"], drop_path_rate=spec["drop_path_rate"],
                                       image_size=(data_config or {}).get("image_size"))
        self.head = create_head(self.encoder.num_features, num_classes, dropout=spec["dropout"],
                                hidden_dim=spec["hidden_dim"], init=spec["init"])
        self.spatial_dropout = create_spatial_dropout(spec["spatial_dropout"])
        self.setup_finetuning()
        self.setup_speed(spec["channels_last"], spec["compile"], spec["compile_mode"])
        weights = torch.tensor(class_weights, dtype=torch.float32) if class_weights else None
        self.register_buffer("class_weights", weights, persistent=False)
        self.label_smoothing = label_smoothing
        # logit_adjust=true: evaluation (val, test, predict, export) subtracts log(train prior) from the
        # logits; a persistent buffer, so an exported graph and a reloaded checkpoint do the same.
        if logit_adjust:
            self.register_buffer("log_priors", log_priors(class_priors, num_classes))
        self.logit_adjust = bool(logit_adjust)
        self._warned_odd_batch = False
        self.mix = self._build_mix(mixup_alpha, cutmix_alpha, num_classes, label_smoothing)
        metrics = build_metrics(num_classes, top_k)
        self.val_metrics = metrics.clone(prefix="val/")
        self.test_metrics = metrics.clone(prefix="test/")
        self.eval_losses = build_eval_losses()

    @staticmethod
    def _build_mix(mixup_alpha: float, cutmix_alpha: float, num_classes: int, label_smoothing: float):
        if not (mixup_alpha or cutmix_alpha):
            return None

        return build_batch_mix(mixup_alpha, cutmix_alpha, num_classes, label_smoothing)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # A 2-D batch holds backbone features cached by transferkit.data.feature_cache (frozen encoder).
        if x.ndim == 2:
            return self.adjusted(self.head(x))
        x = self.prepare_input(x)
        if self.spatial_dropout is None:
            return self.adjusted(self.head(self.encoder(x)))
        return self.adjusted(self.head(pooled_with_spatial_dropout(self.encoder, self.spatial_dropout, x)))

    def adjusted(self, logits: torch.Tensor) -> torch.Tensor:
        """Training sees the raw logits; evaluation the prior-adjusted ones (with logit_adjust)."""
        return logits - self.log_priors if self.logit_adjust and not self.training else logits

    def loss(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if target.ndim == 2:  # soft targets from mixup/cutmix
            return torch.sum(-target * F.log_softmax(logits, dim=-1), dim=-1).mean()
        return F.cross_entropy(logits, target, weight=self.class_weights,
                               label_smoothing=self.label_smoothing)

    def on_train_start(self) -> None:
        # Without its callback a "solved" head would be validated as initialised, silently.
        if self.plan.probes_first and not any(isinstance(c, LinearProbeCallback) for c in self.trainer.callbacks):
            raise RuntimeError("finetune.head_solver=lbfgs (freeze) and finetune.lpft=true need a "
                               "LinearProbeCallback among the trainer's callbacks; build the trainer with "
                               "transferkit.training.builders.build_trainer, which adds it.")

    def training_step(self, batch, batch_idx: int) -> torch.Tensor | None:
        x, y = batch
        if self.plan.solves_head:
            return self._solved_head_step(x, y, batch_idx)
        if self.mix is not None:
            if x.shape[0] % 2 == 0:
                x, y = self.mix(x, y)
            elif not self._warned_odd_batch:
                self._warned_odd_batch = True  # timm's Mixup pairs images, so it needs even batches
                log.warning("mixup/cutmix skipped for odd batches of %d; use an even data.batch_size.", x.shape[0])
        loss = self.loss(self(x), y)
        self.log("train/loss", loss, on_step=True, on_epoch=True, prog_bar=True, batch_size=x.shape[0])
        return self.regularized(loss, x.shape[0])

    def _solved_head_step(self, x: torch.Tensor, y: torch.Tensor, batch_idx: int) -> None:
        """The head was solved at train start (tasks/linear_probe.py): report its loss, change nothing."""
        loss = self.loss(self(x), y)
        self.log("train/loss", loss, on_step=True, on_epoch=True, prog_bar=True, batch_size=x.shape[0])
        if batch_idx == 0:
            # Checkpoints are saved only after an optimizer step. Its learning rate is 0
            # (configure_optimizers), so it changes no weight under any precision plugin.
            optimizer = self.optimizers()
            self.manual_backward(loss)
            optimizer.step()
            optimizer.zero_grad()

    def _eval_step(self, batch, metrics: MetricCollection, stage: str) -> torch.Tensor:
        x, y = batch
        logits = self(x)
        mean_loss = self.eval_losses[stage]
        mean_loss.update(F.cross_entropy(logits, y), weight=x.shape[0])
        self.log(f"{stage}/loss", mean_loss, on_epoch=True, prog_bar=stage == "val", batch_size=x.shape[0])
        metrics.update(logits, y)
        self.log_dict(metrics, on_epoch=True, prog_bar=stage == "val", batch_size=x.shape[0])
        return logits

    def validation_step(self, batch, batch_idx: int) -> None:
        self._eval_step(batch, self.val_metrics, "val")

    def test_step(self, batch, batch_idx: int) -> torch.Tensor:
        """The logits ``N x C``, handed to callbacks (the run report collects them)."""
        return self._eval_step(batch, self.test_metrics, "test")

    def predict_step(self, batch, batch_idx: int) -> torch.Tensor:
        x = batch[0] if isinstance(batch, (list, tuple)) else batch
        return torch.softmax(self(x), dim=-1)


def log_priors(class_priors: list[float] | None, num_classes: int) -> torch.Tensor:
    """log of the train split's class frequencies (a class without images: the smallest seen)."""
    if class_priors is None or len(class_priors) != num_classes:
        raise ValueError(f"logit_adjust=true needs class_priors with {num_classes} values (planning records the "
                         f"train split's), got {class_priors!r}.")
    priors = torch.tensor(class_priors, dtype=torch.float32)
    floor = priors[priors > 0].min() if bool((priors > 0).any()) else torch.tensor(1.0 / num_classes)
    return torch.log(torch.where(priors > 0, priors, floor))


def build_metrics(num_classes: int, top_k: int) -> MetricCollection:
    # balanced_acc: the mean per-class recall; long-tailed runs select and report on it.
    metrics = {"acc": MulticlassAccuracy(num_classes, average="micro"),
               "balanced_acc": MulticlassRecall(num_classes, average="macro"),
               "f1": MulticlassF1Score(num_classes, average="macro")}
    if 1 < top_k < num_classes:
        metrics[f"acc_top{top_k}"] = MulticlassAccuracy(num_classes, top_k=top_k, average="micro")
    # compute_groups=False: shared states between grouped metrics break when Lightning logs and
    # resets each member separately (macro F1 read 1.0 beside 0.978 accuracy).
    return MetricCollection(metrics, compute_groups=False)
