"""Multi-label decision thresholds, tuned after a fit (and after each cv fold) on the validation split.

For each class the threshold with the highest validation F1 (`choose_thresholds`: a cut between two
distinct probabilities, placed halfway between them; ties go to the higher cut; a class without
validation positives keeps 0.5). They are stored in best.ckpt and last.ckpt (`runtime.format.THRESHOLDS_KEY`); the weights, AP and
checkpoint selection never see them. results.json gets `thresholds` and the test split's micro and macro
F1 at the tuned thresholds (`test/f1_macro`, `test/f1_micro`) beside the same at 0.5 (`..._at_0.5`; the
task's own `test/f1`, the same macro F1 at 0.5, is left out of a fit's metrics so it is reported once).
An ensemble (`finetune=auto`'s finishers) gets thresholds of its own, tuned on its averaged validation
probabilities (`tune_ensemble_thresholds`; stored in `checkpoints/ensemble.json`).
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch

from transferkit.data.multilabel import multi_hot
from transferkit.evaluation.ensemble_views import views_loader
from transferkit.runtime.checkpoint_io import AtomicCheckpointIO
from transferkit.runtime.format import THRESHOLDS_KEY
from transferkit.runtime.torch_files import read_torch_file
from transferkit.training.calibrate import split_logits

log = logging.getLogger("transferkit")

DEFAULT_THRESHOLD = 0.5


def best_f1_threshold(scores: np.ndarray, truth: np.ndarray) -> float:
    """The threshold t maximising F1 of `scores >= t` for one class (0.5 without positives)."""
    positives = int(truth.sum())
    if positives == 0:
        return DEFAULT_THRESHOLD
    order = np.argsort(-scores, kind="stable")
    ranked, hits = scores[order], truth[order].astype(np.float64)
    tp = np.cumsum(hits)
    predicted = np.arange(1, len(ranked) + 1)
    last = np.r_[ranked[1:] != ranked[:-1], True]  # only cut between distinct scores
    f1 = np.where(last, 2 * tp / (predicted + positives), -1.0)
    cut = int(np.argmax(f1))
    # halfway to the next lower score: the margin the validation split leaves on both sides
    return float(ranked[cut] if cut + 1 == len(ranked) else (ranked[cut] + ranked[cut + 1]) / 2)


def choose_thresholds(probs: np.ndarray, hot: np.ndarray) -> list[float]:
    """Per class, the max-F1 threshold on (`probs` N x C, `hot` N x C 0/1)."""
    return [best_f1_threshold(probs[:, c], hot[:, c]) for c in range(probs.shape[1])]


def f1_scores(probs: np.ndarray, hot: np.ndarray, thresholds) -> tuple[float, float]:
    """(macro F1, micro F1) of `probs >= thresholds` (a class without positives nor predictions: F1 1)."""
    predicted = probs >= np.asarray(thresholds, dtype=probs.dtype)[None, :]
    truth = hot.astype(bool)
    tp = (predicted & truth).sum(0).astype(np.float64)
    fp = (predicted & ~truth).sum(0).astype(np.float64)
    fn = (~predicted & truth).sum(0).astype(np.float64)
    denominator = 2 * tp + fp + fn
    per_class = np.where(denominator > 0, 2 * tp / np.maximum(denominator, 1), 1.0)
    micro = 2 * tp.sum() / max(2 * tp.sum() + fp.sum() + fn.sum(), 1.0)
    return float(per_class.mean()), float(micro)


def split_probabilities(task, loader, device: torch.device) -> tuple[np.ndarray, np.ndarray]:
    """Sigmoid probabilities and multi-hot targets of every batch of `loader` (eval mode)."""
    logits, labels = split_logits(task, loader, device)
    return torch.sigmoid(logits).double().numpy(), multi_hot(labels.numpy(), logits.shape[1])


def tune_thresholds(task, data, device: torch.device, has_test: bool) -> dict:
    """Tune on validation, score the test split at the tuned thresholds and at 0.5: results.json's record."""
    val = split_probabilities(task, data.val_dataloader(), device)
    test = split_probabilities(task, data.test_dataloader(), device)
    return threshold_record(val, test, list(task.class_names), has_test)


@torch.inference_mode()
def ensemble_probabilities(ensemble, datamodule, split: str, batch_size: int, num_workers) -> tuple[np.ndarray, np.ndarray]:
    """An `EnsembleTask`'s averaged sigmoid probabilities on `split` (each member in its own
    preprocessing) and the multi-hot targets."""
    probs, masks = [], []
    for views, y in views_loader(ensemble.eval(), datamodule, batch_size, num_workers, split=split):
        probs.append(ensemble.probabilities(views).double().cpu())
        masks.append(y.cpu())
    return torch.cat(probs).numpy(), multi_hot(torch.cat(masks).numpy(), len(ensemble.class_names))


def tune_ensemble_thresholds(ensemble, datamodule, batch_size: int, num_workers, has_test: bool) -> dict:
    """`tune_thresholds` for an ensemble (finetune=auto's finishers): the thresholds tuned on the
    ensemble's own validation probabilities (the members' sigmoids averaged), not the members' own."""
    val = ensemble_probabilities(ensemble, datamodule, "val", batch_size, num_workers)
    test = ensemble_probabilities(ensemble, datamodule, "test" if has_test else "val", batch_size, num_workers)
    return threshold_record(val, test, list(ensemble.class_names), has_test)


def threshold_record(val: tuple[np.ndarray, np.ndarray], test: tuple[np.ndarray, np.ndarray],
                     class_names: list[str], has_test: bool) -> dict:
    """The thresholds tuned on (`val` probabilities, multi-hot), and the `test` split's F1 at them and at 0.5."""
    (val_probs, val_hot), (test_probs, test_hot) = val, test
    thresholds = choose_thresholds(val_probs, val_hot)
    macro, micro = f1_scores(test_probs, test_hot, thresholds)
    macro_half, micro_half = f1_scores(test_probs, test_hot, [DEFAULT_THRESHOLD] * len(thresholds))
    split = "test" if has_test else "val"
    log.info("Multi-label thresholds tuned on %d val images (max F1 per class); %s macro F1 %.4f (0.5: %.4f), "
             "micro F1 %.4f (0.5: %.4f)", len(val_probs), split, macro, macro_half, micro, micro_half)
    metrics = {"test/f1_macro": macro, "test/f1_micro": micro,
               "test/f1_macro_at_0.5": macro_half, "test/f1_micro_at_0.5": micro_half}
    return {"tuned_on": "val", "val_images": len(val_probs), "tested_on": split,
            "thresholds": dict(zip(class_names, [round(t, 6) for t in thresholds])),
            "values": thresholds, "metrics": metrics}


def fit_thresholds(task, data, trainer, has_test: bool) -> dict | None:
    """The fit session's threshold step (rank 0, multi-label only)."""
    if getattr(task, "kind", "") != "multilabel" or not trainer.is_global_zero:
        return None
    return tune_thresholds(task, data, trainer.strategy.root_device, has_test)


def store_thresholds(paths: list[str | Path | None], thresholds: list[float]) -> list[str]:
    """Write the thresholds into each existing checkpoint (atomically); returns the paths written."""
    written = []
    for path in paths:
        if not path or not Path(path).is_file():
            continue
        checkpoint = read_torch_file(path)
        checkpoint[THRESHOLDS_KEY] = [float(t) for t in thresholds]
        AtomicCheckpointIO().save_checkpoint(checkpoint, path)
        written.append(str(path))
    return written


def record_thresholds(record: dict | None, results: dict) -> None:
    """The thresholds into the run's final checkpoints and their scores into `results` (in place)."""
    if record is None:
        return
    results["metrics"].update(record.pop("metrics"))
    results["metrics"].pop("test/f1", None)  # the task's macro F1 at 0.5: test/f1_macro_at_0.5 says which
    values = record.pop("values")
    record["checkpoints"] = store_thresholds([results.get("best_checkpoint"), results.get("last_checkpoint")], values)
    results["thresholds"] = record
