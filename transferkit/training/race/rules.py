"""`finetune=auto`: how a leg is scored and who survives a cut (pure).

One rule for any metric: a candidate is ranked on the validation metric the run selects on
(`task.monitor`, e.g. `val/acc`), computed from the head's raw predictions (uncalibrated) on the
validation images of its scored evaluations, with a standard error from a bootstrap over those
images. The same bootstrap draws score every candidate, so the difference between two candidates
has its own (paired) standard error: that is what a cut reports. The runner that trains the legs
is `transferkit.training.race.legs`; the plan (candidates, rungs, cost bound) is
`transferkit.planning.race`.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from transferkit.planning.spec import EPOCH_COST, FREE_COST, Candidate, RacePlan, Rung  # noqa: F401 - the plan's types

ORDER = tuple(EPOCH_COST)   # the cost order: exact ties go to the earlier (cheaper) plan
RACE_PROGRESS = "race/progress.json"  # under the run directory: how far the race got (commands.race_progress)
BOOTSTRAP_DRAWS = 1000      # resamples of the validation images; the SE of an SE is ~2 % at 1000
BOOTSTRAP_SEED = 0          # fixed: every rank (and a resumed race) draws the same resamples
SCORED_EVALUATIONS = 2      # a leg's score pools its last two validations: one lucky epoch does not decide


def accuracy(pred: np.ndarray, label: np.ndarray) -> np.ndarray:
    """Accuracy along the last axis (pred and label: [..., n_images])."""
    return (pred == label).mean(axis=-1)


def balanced_accuracy(pred: np.ndarray, label: np.ndarray) -> np.ndarray:
    """Mean per-class recall along the last axis; a class absent from a resample is left out."""
    recalls = []
    for c in np.unique(label):
        members = label == c
        count = members.sum(axis=-1)
        hits = ((pred == c) & members).sum(axis=-1)
        recalls.append(np.where(count > 0, hits / np.maximum(count, 1), np.nan))
    return np.nanmean(np.stack(recalls), axis=0)


METRICS: dict[str, Callable[[np.ndarray, np.ndarray], np.ndarray]] = {
    "val/acc": accuracy, "val/balanced_acc": balanced_accuracy}
MULTILABEL_METRICS = ("val/map",)  # scored from per-class probabilities (`score_multilabel`)


def metric_of(monitor: str) -> Callable[[np.ndarray, np.ndarray], np.ndarray]:
    if monitor not in METRICS:
        raise ValueError(f"finetune=auto ranks on the run's monitor {monitor!r}, which the race cannot score "
                         f"from predictions; it knows {sorted(METRICS)}.")
    return METRICS[monitor]


def average_precision(scores: np.ndarray, truth: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """One class's average precision for each row of `weights` ([draws, n]: how many times each image is
    in the sample; a bootstrap resample repeats some and leaves others out).

    The definition of torchmetrics' and scikit-learn's (`val/map`): precision and recall at every
    distinct score, AP = sum over thresholds, highest first, of (R_k - R_{k-1}) * P_k. Tied scores are one
    threshold, so an image drawn twice counts twice at its own score, exactly as a duplicated row would.
    A sample without positives scores 0, as torchmetrics' `val/map` scores such a class."""
    order = np.argsort(-scores, kind="stable")
    ranked, hits = scores[order], truth[order].astype(np.float64)
    last = np.r_[ranked[1:] != ranked[:-1], True]  # the last image of each tie group: one threshold
    w = weights[:, order]
    tp, fp = np.cumsum(w * hits, axis=1)[:, last], np.cumsum(w * (1.0 - hits), axis=1)[:, last]
    positives = tp[:, -1:]
    recall = tp / np.maximum(positives, 1e-300)
    precision = tp / np.maximum(tp + fp, 1e-300)  # where nothing is predicted yet, recall does not move
    gain = np.diff(np.concatenate([np.zeros_like(recall[:, :1]), recall], axis=1), axis=1)
    return np.where(positives[:, 0] > 0, (gain * precision).sum(axis=1), 0.0)


def mean_average_precision(probs: np.ndarray, hot: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Macro AP (`val/map`) of `probs` [n, C] against the multi-hot `hot` [n, C], per row of `weights`."""
    return np.mean([average_precision(probs[:, c], hot[:, c], weights) for c in range(probs.shape[1])], axis=0)


def resample_counts(n_images: int, draws: int = BOOTSTRAP_DRAWS, seed: int = BOOTSTRAP_SEED) -> np.ndarray:
    """`bootstrap_indices` as multiplicities: [draws, n_images], how often each image is drawn."""
    index = bootstrap_indices(n_images, draws, seed)
    offsets = index + n_images * np.arange(draws)[:, None]
    return np.bincount(offsets.ravel(), minlength=draws * n_images).reshape(draws, n_images).astype(np.float64)


def score_multilabel(used: list[dict], monitor: str = "val/map", draws: int = BOOTSTRAP_DRAWS) -> Score:
    """A multi-label leg's score: the macro AP of each scored validation's per-class sigmoid scores
    (`{"prob": [[...]], "target": [[0/1]]}`), averaged over them, with the same bootstrap resamples of the
    validation images as every candidate (so the difference of two candidates has a paired SE)."""
    if monitor not in MULTILABEL_METRICS:
        raise ValueError(f"finetune=auto ranks a multi-label run on {list(MULTILABEL_METRICS)}, not {monitor!r}.")
    hot = np.asarray(used[-1]["target"], dtype=np.float64)
    counts = resample_counts(len(hot), draws)
    value, replicates = 0.0, np.zeros(draws)
    for output in used:
        probs = np.asarray(output["prob"], dtype=np.float64)
        value += float(mean_average_precision(probs, hot, np.ones((1, len(hot))))[0]) / len(used)
        replicates += mean_average_precision(probs, hot, counts) / len(used)
    return Score(value, replicates)


def output_size(output: dict) -> int:
    """How many validation images one recorded validation holds (single- or multi-label)."""
    return len(output["target"] if "target" in output else output["label"])


@dataclass(frozen=True)
class Score:
    """A leg's score: the metric on its scored validations, and the same on every bootstrap resample."""

    value: float
    replicates: np.ndarray | None = field(default=None, compare=False, repr=False)
    se_fallback: float = 0.0  # without per-image outputs: a binomial standard error

    @property
    def se(self) -> float:
        return float(np.std(self.replicates, ddof=1)) if self.replicates is not None else self.se_fallback

    def se_of_difference(self, other: Score) -> float:
        """The paired standard error of self - other (same images, same resamples)."""
        if self.replicates is None or other.replicates is None or len(self.replicates) != len(other.replicates):
            return math.hypot(self.se, other.se)
        return float(np.std(self.replicates - other.replicates, ddof=1))


def bootstrap_indices(n_images: int, draws: int = BOOTSTRAP_DRAWS, seed: int = BOOTSTRAP_SEED) -> np.ndarray:
    """`draws` resamples (with replacement) of `n_images` validation images: [draws, n_images]."""
    return np.random.default_rng(seed).integers(0, n_images, size=(draws, n_images))


def score_outputs(outputs: list[dict], monitor: str = "val/acc", draws: int = BOOTSTRAP_DRAWS) -> Score:
    """The score of a leg from its last `SCORED_EVALUATIONS` validations' predictions
    (`ValidationRecorder.outputs`: {"pred": [...], "label": [...]} each, the same images in order; a
    multi-label leg's {"prob": [[...]], "target": [[...]]}: `score_multilabel`)."""
    if not outputs:
        raise ValueError("a race leg produced no validation predictions (is the val split empty?)")
    used = outputs[-SCORED_EVALUATIONS:]
    if "prob" in used[-1]:  # a multi-label leg: per-class probabilities and multi-hot targets
        return score_multilabel(used, monitor, draws)
    label = np.asarray(used[-1]["label"])
    preds = np.stack([np.asarray(o["pred"]) for o in used])  # [evaluations, n_images]
    metric = metric_of(monitor)
    value = float(np.mean(metric(preds, label[None, :])))
    index = bootstrap_indices(len(label), draws)
    resampled = metric(preds[:, index], label[index][None, :, :])  # [evaluations, draws]
    return Score(value, np.asarray(resampled).mean(axis=0))


def score_accuracies(accs: list[float], val_size: int) -> Score:
    """The score of a leg without per-image outputs: its mean accuracy, with a binomial standard error."""
    if not accs:
        raise ValueError("a race leg produced no validation accuracy (is the val split empty?)")
    value = float(np.mean(accs[-SCORED_EVALUATIONS:]))
    return Score(value, None, accuracy_tolerance(value, val_size))


def accuracy_tolerance(accuracy: float, val_size: int) -> float:
    """One binomial standard error of a validation accuracy."""
    p = min(max(accuracy, 1.0 / max(val_size, 1)), 1 - 1.0 / max(val_size, 1))
    return math.sqrt(p * (1 - p) / max(val_size, 1))


@dataclass(frozen=True)
class Verdict:
    """Why a candidate was kept or cut at one cut: its score, its SE, and the rule's words."""

    name: str
    kept: bool
    value: float
    se: float
    behind: float      # best score minus its score (0 for the best)
    se_behind: float   # paired SE of that difference
    why: str

    def to_dict(self) -> dict:
        return {"name": self.name, "kept": self.kept, "score": round(self.value, 4), "se": round(self.se, 4),
                "behind": round(self.behind, 4), "se_behind": round(self.se_behind, 4), "why": self.why}


def rank_key(name: str, score: Score) -> tuple:
    """Higher score first; an exact tie goes to the cheaper plan (ORDER)."""
    return (-score.value, ORDER.index(name) if name in ORDER else len(ORDER), name)


def choose_survivors(scores: dict[str, Score], keep: int) -> list[Verdict]:
    """Keep the `keep` best of `scores` by the run's metric; exact ties go to the cheaper plan.

    Every verdict says where the candidate stood: its score ± SE, and how far it was behind the
    best, with the paired SE of that gap (how much of it the validation images' luck could explain)."""
    ranked = sorted(scores, key=lambda n: rank_key(n, scores[n]))
    best = scores[ranked[0]]
    verdicts = []
    for place, name in enumerate(ranked, start=1):
        score = scores[name]
        behind, se_behind = best.value - score.value, (score.se_of_difference(best) if place > 1 else 0.0)
        kept = place <= keep
        if place == 1:
            why = f"best of {len(ranked)}"
        else:
            sigmas = behind / se_behind if se_behind > 0 else math.inf if behind > 0 else 0.0
            why = (f"{'kept' if kept else 'cut'}: rank {place} of {len(ranked)}, keep {keep}; "
                   f"{behind:.3f} behind {ranked[0]} ({sigmas:.1f} paired SE)")
        verdicts.append(Verdict(name, kept, score.value, score.se, behind, se_behind, why))
    return verdicts


@dataclass
class Entry:
    """A candidate's record: one row per rung it ran (`results.json` -> auto.candidates)."""

    name: str
    strategy: str
    rungs: list[dict] = field(default_factory=list)
    seconds: float = 0.0

    def to_dict(self, outputs: bool = False) -> dict:
        """Its record; `outputs` keeps each rung's scored predictions (race/progress.json needs them to
        score a resumed race's cuts; results.json does not)."""
        rungs = self.rungs if outputs else [{k: v for k, v in r.items() if k != "outputs"} for r in self.rungs]
        return {"name": self.name, "strategy": self.strategy, "rungs": rungs, "seconds": round(self.seconds, 2)}
