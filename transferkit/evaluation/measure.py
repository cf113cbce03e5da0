"""Measure a data set with frozen backbone features: size and similarity, the quadrant, its plan.

The library behind the `advise` command and `finetune.strategy=auto` (called by planning). Scores
themselves live in `transferkit.evaluation.transferability`.
"""

from __future__ import annotations

import logging

import numpy as np
import torch
from torch.utils.data import DataLoader, Subset

from transferkit.data.sources import TransformedDataset
from transferkit.errors import ConfigError
from transferkit.models.backbones import create_backbone
from transferkit.models.weight_loading import load_weights
from transferkit.planning.spec import ModelSpec, RunSpec
from transferkit.evaluation.transferability import SIMILARITY_THRESHOLD, SIZE_THRESHOLD, Advice, measure

log = logging.getLogger("transferkit")

# Defaults of the optional `advise` config block (advise.max_images=..., advise.size_threshold=...).
ADVISE_DEFAULTS: dict = {"max_images": 2000, "k": 5, "folds": 5, "size_threshold": SIZE_THRESHOLD,
                         "similarity_threshold": SIMILARITY_THRESHOLD, "compare_random": True}


RANDOM_TWIN_IMAGES = 500


def advise_options(given: dict | None) -> dict:
    """The `advise` options over their defaults; an unknown key is named."""
    options, given = dict(ADVISE_DEFAULTS), dict(given or {})
    unknown = set(given) - set(options)
    if unknown:
        raise ConfigError(f"advise.{sorted(unknown)[0]} is not an advise option; valid keys: {sorted(options)}.")
    return {**options, **given}


def sample_indices(labels: np.ndarray, max_images: int, seed: int) -> np.ndarray:
    """At most `max_images` indices, the same fraction of every class (at least 2 per class)."""
    if len(labels) <= max_images:
        return np.arange(len(labels))
    rng = np.random.default_rng(seed)
    keep = []
    for c in np.unique(labels):
        members = np.flatnonzero(labels == c)
        take = max(2, round(len(members) * max_images / len(labels)))
        keep.append(rng.choice(members, size=min(take, len(members)), replace=False))
    return np.sort(np.concatenate(keep))


@torch.no_grad()
def extract_features(backbone: torch.nn.Module, dataset, batch_size: int, num_workers: int = 0) -> np.ndarray:
    """Pooled features of every image, backbone in eval mode."""
    backbone.eval()
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers)
    return torch.cat([backbone(images).flatten(1) for images, _ in loader]).numpy()


def frozen_backbones(model: ModelSpec, seed: int, twin: bool = True) -> tuple[torch.nn.Module, torch.nn.Module | None]:
    """The planned backbone with its weights, and a random-init twin (None when weights are none or
    without `twin`)."""
    fmt, weights = model.input, model.weights
    torch.manual_seed(seed)
    backbone = create_backbone(model.backbone, in_chans=fmt.in_chans, image_size=fmt.image_size)
    if weights.kind == "none":
        log.warning("model.weights=none: the features are those of a randomly initialised backbone.")
        return backbone, None
    twin = create_backbone(model.backbone, in_chans=fmt.in_chans, image_size=fmt.image_size) if twin else None
    load_weights(backbone, weights, backbone_name=model.backbone, in_chans=fmt.in_chans, image_size=fmt.image_size,
                 cache_dir=model.cache_dir)
    return backbone, twin


def measure_datamodule(spec: RunSpec, datamodule, quick: bool = False) -> Advice:
    """Extract frozen features of the training split and place it in the matrix.

    `quick` (the race's measurement): no linear probe, and the random-init twin scores at most
    `RANDOM_TWIN_IMAGES` images, since only the LogME gain's sign and size matter there.
    """
    if spec.task.kind != "classification":
        raise ConfigError(f"task.kind={spec.task.kind!r}: advise measures classification data; use task=classification.")
    options, seed = advise_options(spec.advise), spec.seed
    datamodule.scan()
    labels = datamodule.labels("train")
    counts = np.bincount(labels, minlength=len(datamodule.class_names))
    counts = counts[counts > 0]
    chosen = sample_indices(labels, options["max_images"], seed)
    images = TransformedDataset(datamodule.sources["train"], datamodule.transform(train=False))
    backbone, twin = frozen_backbones(spec.model, seed)
    batch = spec.data.batch_size
    features = extract_features(backbone, Subset(images, chosen), batch)
    random_features = random_labels = None
    if twin is not None and options["compare_random"]:
        few = chosen[sample_indices(labels[chosen], RANDOM_TWIN_IMAGES, seed)] if quick else chosen
        random_features, random_labels = extract_features(twin, Subset(images, few), batch), labels[few]
    log.info("advise: %d features of dim %d from %d training images", *features.shape, len(labels))
    return measure(features, labels[chosen], random_features, k=options["k"], folds=options["folds"],
                   seed=seed, class_counts=counts, size_threshold=options["size_threshold"],
                   similarity_threshold=options["similarity_threshold"], probe=not quick,
                   random_labels=random_labels)
