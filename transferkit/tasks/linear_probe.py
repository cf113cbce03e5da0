"""Linear probing: solve a classification head on the frozen backbone's features before training.

`LinearProbeCallback` runs at the start of training, when `finetune.head_solver=lbfgs` (strategy
freeze: the solve *is* the training; the task then only validates) or `finetune.lpft=true` (LP-FT,
Kumar et al. ICLR 2022: partial/full fine-tuning starts from the solved head instead of a random
one). The features are the training split's: the feature cache's when the run uses it, else
extracted once from the encoder in eval mode with the eval transform. The solver itself is
`transferkit.tasks.head_solver`. A resumed run (`ckpt_path`) keeps its checkpoint's head.

What an epoch means with `head_solver=lbfgs` and `finetune=freeze`: the solve replaces the SGD
epochs, so planning sets `trainer.max_epochs=1`. That epoch's training steps only log `train/loss`
of the solved head (one optimizer step at learning rate 0 lets Lightning count a step and save
checkpoints; no weight changes); its validation gives `val/*`, and best.ckpt and last.ckpt hold the
same solved head. Early stopping has nothing to stop. With LP-FT the epochs are the usual ones.
"""

from __future__ import annotations

import logging

import numpy as np
import pytorch_lightning as pl
import torch
from torch.utils.data import Dataset

from transferkit.data.feature_store import FeatureDataset, extract_features
from transferkit.data.sources import TransformedDataset
from transferkit.data.multilabel import multi_hot
from transferkit.tasks.head_solver import HeadSolution, solve_linear_head, solve_multilabel_head
from transferkit.models.heads import set_linear_head

log = logging.getLogger(__name__)


def eval_train_dataset(datamodule) -> Dataset:
    """The training split with the eval transform (what the frozen backbone is probed on)."""
    inner = getattr(datamodule, "datamodule", datamodule)  # FeatureCacheDataModule wraps the real one
    return TransformedDataset(inner.sources["train"], inner.transform(train=False))


def probe_features(trainer: pl.Trainer, encoder: torch.nn.Module) -> tuple[np.ndarray, np.ndarray, str]:
    """The training split's frozen features and labels, and where they came from."""
    loader = trainer.train_dataloader
    if isinstance(loader.dataset, FeatureDataset):  # finetune=freeze on the feature cache
        return np.asarray(loader.dataset.features), np.asarray(loader.dataset.labels), "feature cache"
    plugin = trainer.precision_plugin
    features, labels = extract_features(
        encoder, eval_train_dataset(trainer.datamodule), lambda n, dim: np.empty((n, dim), np.float32),
        loader.batch_size or 1, loader.num_workers, plugin.forward_context, plugin.convert_input)
    return features, labels, "extracted (eval transform)"


class LinearProbeCallback(pl.Callback):
    """Solve the task's linear head on frozen training features once, before the first epoch."""

    def __init__(self, seed: int = 0) -> None:
        self.seed = seed
        self.report: dict | None = None
        # (features, labels, origin) already computed for the same frozen encoder and eval transform
        # (the finetune=auto race shares its freeze candidate's cached features); None = compute.
        self.given: tuple[np.ndarray, np.ndarray, str] | None = None
        # A head already solved on `given` (the race's freeze candidate), with the solver options it
        # was solved with: reused when this task's options are the same (the solve is deterministic).
        self.given_solution: tuple[dict, HeadSolution] | None = None
        self.solution: tuple[dict, HeadSolution] | None = None  # (options, solution) of this fit's solve

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.ckpt_path is not None or trainer.current_epoch > 0:
            log.info("Linear probe skipped: resumed from %s, whose head is already trained.", trainer.ckpt_path)
            return
        features, labels, origin = self.given or probe_features(trainer, pl_module.encoder)
        weights = getattr(pl_module, "class_weights", None)
        options = {"num_classes": int(pl_module.hparams.num_classes), "seed": self.seed,
                   "class_weights": weights.tolist() if weights is not None else None,
                   "label_smoothing": float(getattr(pl_module, "label_smoothing", 0.0))}
        reused = self.given is not None and self.given_solution is not None and self.given_solution[0] == options
        if reused:
            solution = self.given_solution[1]
            log.info("Linear probe: the head solved on the same %s, reused (C=%g)", origin, solution.c)
        elif getattr(pl_module, "kind", "") == "multilabel":  # one-vs-rest logistic heads on the label sets
            weights = getattr(pl_module, "pos_weight", None)
            solution = solve_multilabel_head(features, multi_hot(labels, options["num_classes"]), self.seed,
                                             pos_weight=weights.tolist() if weights is not None else None)
            log_solution(solution, len(labels), origin)
        else:
            solution = solve_linear_head(features, labels, **options)
            log_solution(solution, len(labels), origin)
        set_linear_head(pl_module.head, solution.weight, solution.bias)
        self.solution = (options, solution)
        self.report = {**solution.to_dict(), "items": int(len(labels)), "features": origin,
                       "then": "validate only" if pl_module.plan.solves_head else pl_module.plan.strategy,
                       "class_weighted": options["class_weights"] is not None}
        if getattr(pl_module, "kind", "") == "multilabel":  # one-vs-rest heads, BCE's positive weights
            self.report["positive_weighted"] = getattr(pl_module, "pos_weight", None) is not None
        if reused:
            self.report.update({"seconds": 0.0, "reused": "the race's freeze candidate's solve"})


def log_solution(solution: HeadSolution, items: int, origin: str) -> None:
    cv = f"cv acc {solution.cv_acc[solution.c]:.4f} ({solution.folds} folds)" if solution.folds else "no cv"
    log.info("Linear probe: L-BFGS head on %d x %d features (%s), C=%g, %s, %.2f s", items,
             solution.weight.shape[1], origin, solution.c, cv, solution.seconds)


def probe_report(trainer: pl.Trainer) -> dict | None:
    """What the run's linear probe did (for results.json), or None when it had none."""
    found = [cb.report for cb in trainer.callbacks if isinstance(cb, LinearProbeCallback)]
    return found[0] if found else None
