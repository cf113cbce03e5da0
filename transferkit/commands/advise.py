"""`python -m transferkit advise ...`: measure size and similarity, place the data in the matrix.

Extracts frozen backbone features of the training images (deterministic eval transform), scores
them (k-NN, linear probe, LogME against a random-init twin, see `transferkit.transferability`),
logs the quadrant and recipe, and writes `advice.json` and `advice.png` into the run directory.
`finetune.strategy=auto` in `fit` calls `resolve_auto_finetune` for the same decision.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf
from torch.utils.data import DataLoader, Subset

from transferkit.builders import build_datamodule, container
from transferkit.errors import ConfigError
from transferkit.rundir import create_run_dir, write_config, write_json
from transferkit.transferability import QUADRANTS, SIMILARITY_THRESHOLD, SIZE_THRESHOLD, Advice, measure

log = logging.getLogger("transferkit")

# Defaults of the optional `advise` config block (advise.max_images=..., advise.size_threshold=...).
ADVISE_DEFAULTS: dict = {"max_images": 2000, "k": 5, "folds": 5, "size_threshold": SIZE_THRESHOLD,
                         "similarity_threshold": SIMILARITY_THRESHOLD, "compare_random": True}


def advise_options(cfg: DictConfig) -> dict:
    options = dict(ADVISE_DEFAULTS)
    given = container(cfg.get("advise"))
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


def frozen_backbones(cfg: DictConfig) -> tuple[torch.nn.Module, torch.nn.Module | None]:
    """The configured backbone with its weights, and a random-init twin (None when weights are none)."""
    from transferkit.models.backbones import create_backbone
    from transferkit.models.weights import classify_weights, init_backbone_weights

    model = cfg.model
    torch.manual_seed(cfg.seed)
    backbone = create_backbone(model.backbone, in_chans=model.in_chans)
    twin = None
    if classify_weights(model.weights) != "none":
        twin = create_backbone(model.backbone, in_chans=model.in_chans)
        init_backbone_weights(backbone, model.weights, backbone_name=model.backbone, in_chans=model.in_chans)
    else:
        log.warning("model.weights=none: similarity is measured on randomly initialised features.")
    return backbone, twin


def measure_datamodule(cfg: DictConfig, datamodule) -> Advice:
    """Extract frozen features of the training split and place it in the matrix."""
    if cfg.task.kind != "classification":
        raise ConfigError(f"task.kind={cfg.task.kind!r}: advise measures classification data; use task=classification.")
    from transferkit.data.sources import TransformedDataset

    options = advise_options(cfg)
    datamodule.scan()
    labels = datamodule.labels("train")
    counts = np.bincount(labels, minlength=len(datamodule.class_names))
    counts = counts[counts > 0]
    chosen = sample_indices(labels, options["max_images"], cfg.seed)
    dataset = Subset(TransformedDataset(datamodule.sources["train"], datamodule.transform(train=False)), chosen)
    backbone, twin = frozen_backbones(cfg)
    batch = int(cfg.data.batch_size)
    features = extract_features(backbone, dataset, batch)
    random_features = extract_features(twin, dataset, batch) if twin is not None and options["compare_random"] else None
    log.info("advise: %d features of dim %d from %d training images", *features.shape, len(labels))
    return measure(features, labels[chosen], random_features, k=options["k"], folds=options["folds"],
                   seed=cfg.seed, class_counts=counts, size_threshold=options["size_threshold"],
                   similarity_threshold=options["similarity_threshold"])


def describe(advice: Advice) -> str:
    lines = [f"quadrant: {advice.quadrant}  ->  python -m transferkit fit recipe={advice.recipe}",
             f"strategy: {advice.strategy}",
             f"size: {advice.num_images} images, {advice.num_classes} classes, "
             f"{advice.images_per_class:.0f} per class (threshold {advice.size_threshold:g})",
             f"similarity: {advice.similarity:.3f} (chance-normalised k-NN; threshold {advice.similarity_threshold:g})"]
    scores = {"k-NN accuracy": advice.knn_accuracy, "linear-probe accuracy": advice.linear_probe_accuracy,
              "LogME": advice.logme, "LogME random init": advice.logme_random, "LogME gain": advice.logme_gain}
    lines += [f"{name}: {value:.3f}" for name, value in scores.items() if value is not None]
    lines += [f"  because {reason}" for reason in advice.reasons]
    return "\n".join(lines)


def plot_matrix(advice: Advice, path: Path, name: str = "dataset") -> Path:
    """The size x similarity matrix with the four recipes and this dataset marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    size_t, sim_t = advice.size_threshold, advice.similarity_threshold
    x = max(advice.images_per_class, 1.0)
    lo, hi = min(x, size_t) / 10, max(x, size_t) * 10
    fig, ax = plt.subplots(figsize=(6, 5))
    ax.set_xscale("log")
    ax.set_xlim(lo, hi)
    ax.set_ylim(min(-0.05, advice.similarity - 0.05), 1.05)
    ax.axvline(size_t, color="grey", linestyle="--")
    ax.axhline(sim_t, color="grey", linestyle="--")
    for quadrant in QUADRANTS:
        qx = (lo * size_t) ** 0.5 if quadrant.startswith("small") else (size_t * hi) ** 0.5
        qy = (1 + sim_t) / 2 if quadrant.endswith("_similar") else sim_t / 2
        weight = "bold" if quadrant == advice.quadrant else "normal"
        ax.text(qx, qy, quadrant, ha="center", va="center", fontweight=weight, alpha=0.7)
    ax.plot([x], [advice.similarity], marker="*", markersize=18, color="crimson")
    ax.annotate(name, (x, advice.similarity), textcoords="offset points", xytext=(8, 8))
    ax.set_xlabel("images per class (log)")
    ax.set_ylabel("similarity (chance-normalised k-NN accuracy)")
    ax.set_title(f"{name}: {advice.quadrant}")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def run(cfg: DictConfig) -> dict:
    datamodule = build_datamodule(cfg)
    advice = measure_datamodule(cfg, datamodule)
    run_dir = create_run_dir(cfg.run_dir)
    write_config(cfg, run_dir)
    record = {**advice.to_dict(), "data": datamodule.describe(), "backbone": cfg.model.backbone,
              "weights": str(cfg.model.weights)}
    json_path = write_json(record, run_dir / "advice.json")
    png_path = plot_matrix(advice, run_dir / "advice.png", name=datamodule.describe())
    log.info("%s", describe(advice))
    log.info("Advice: %s, %s", json_path, png_path)
    return {**record, "run_dir": str(run_dir), "advice_json": str(json_path), "advice_png": str(png_path)}


def quadrant_finetune(quadrant: str) -> dict:
    """The finetune group a quadrant's recipe selects: conf/finetune/<strategy>.yaml + the recipe's keys."""
    from transferkit.cli import package_dir
    from transferkit.finetune import choose_strategy

    strategy, extra = choose_strategy(quadrant), {}
    recipe = package_dir("recipes") / f"{quadrant}.yaml"
    if recipe.is_file():
        spec = OmegaConf.to_container(OmegaConf.load(recipe))
        for item in spec.get("defaults", []):
            if isinstance(item, dict) and "override /finetune" in item:
                strategy = item["override /finetune"]
        extra = spec.get("finetune", {}) or {}
    base = OmegaConf.to_container(OmegaConf.load(package_dir("conf") / "finetune" / f"{strategy}.yaml"))
    return {**base, **extra}


def resolve_auto_finetune(cfg: DictConfig, datamodule) -> tuple[dict, dict]:
    """`finetune.strategy=auto`: measure, then use the quadrant's finetune settings.

    Keys the user changed from `conf/finetune/auto.yaml` (e.g. finetune.trainable_stages=3) win.
    Returns (finetune settings, advice record for results.json).
    """
    from transferkit.cli import package_dir

    advice = measure_datamodule(cfg, datamodule)
    chosen = quadrant_finetune(advice.quadrant)
    defaults = OmegaConf.to_container(OmegaConf.load(package_dir("conf") / "finetune" / "auto.yaml"))
    given = container(cfg.finetune)
    explicit = {k: v for k, v in given.items() if k != "strategy" and defaults.get(k) != v}
    finetune = {**chosen, **explicit}
    log.info("finetune.strategy=auto -> %s (%s)%s", finetune["strategy"], advice.quadrant,
             f"; kept explicit {sorted(explicit)}" if explicit else "")
    return finetune, {**advice.to_dict(), "finetune": finetune, "explicit_keys": sorted(explicit)}
