"""`python -m transferkit show-augs [recipe=...] [data.root=...] [augment=...]`: look at the augmentation.

Takes a few training images (classes in turn), applies the configured train pipeline several
times to each, undoes the normalisation and writes `augmentations.png` into a new run directory:
one row per image, the decoded original first. Segmentation data is shown with its mask
overlaid, so misaligned masks are visible at a glance.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import numpy as np
import pytorch_lightning as pl
from omegaconf import DictConfig

from transferkit.training.builders import build_datamodule, container
from transferkit.planning.plan import plan_model
from transferkit.errors import ConfigError
from transferkit.training.rundir import create_run_dir, write_config, write_json

log = logging.getLogger("transferkit")

DEFAULTS = {"samples": 4, "variants": 6}


def show_augs_options(cfg: DictConfig) -> dict[str, int]:
    options = {**DEFAULTS, **container(cfg.get("show_augs"))}
    for key, value in options.items():
        if key not in DEFAULTS:
            raise ConfigError(f"show_augs.{key} is not an option; use {sorted(DEFAULTS)}.")
        if not isinstance(value, int) or value < 1:
            raise ConfigError(f"show_augs.{key}={value!r} must be a whole number >= 1.")
    return options


def choose_samples(labels: np.ndarray | None, count: int, seed: int, size: int) -> list[int]:
    """`count` indices of a `size`-long split, taking the classes in turn (seeded order within each)."""
    rng = np.random.default_rng(seed)
    if labels is None:
        return sorted(rng.permutation(size)[:count].tolist())
    per_class = [rng.permutation(np.flatnonzero(labels == c)).tolist() for c in np.unique(labels)]
    chosen: list[int] = []
    while len(chosen) < min(count, size):
        for members in per_class:
            if members and len(chosen) < count:
                chosen.append(members.pop(0))
    return chosen


def augment_row(sample: tuple, transform: Callable, variants: int,
                show: Callable[[object], np.ndarray]) -> list[np.ndarray]:
    """The decoded sample, then `variants` draws of `transform` (masks overlaid when present)."""
    from transferkit.evaluation.reports.augment_grid import to_rgb
    from transferkit.evaluation.reports.overlays import overlay

    image, target = sample
    mask = target if isinstance(target, np.ndarray) else None
    panels = [to_rgb(image) if mask is None else overlay(to_rgb(image), mask)]
    for _ in range(variants):
        if mask is None:
            panels.append(show(transform(image=image)["image"]))
        else:
            out = transform(image=image, mask=mask)
            panels.append(overlay(show(out["image"]), out["mask"].numpy()))
    return panels


def caption(datamodule, sample: tuple, index: int) -> str:
    target = sample[1]
    names = getattr(datamodule, "class_names", None)
    if isinstance(target, np.ndarray) or not names:
        return f"#{index}"
    return str(names[int(target)])[:16]


def train_labels(datamodule) -> np.ndarray | None:
    labels = getattr(datamodule, "labels", None)
    return labels("train") if callable(labels) else None


def run(cfg: DictConfig) -> dict:
    from transferkit.data.transforms import PER_IMAGE_STANDARDISED
    from transferkit.evaluation.reports.augment_grid import grid_pixel_size, save_augmentation_grid, tensor_to_display

    options = show_augs_options(cfg)
    pl.seed_everything(cfg.seed, verbose=False)  # the pipeline draws from torch's seed
    cfg = plan_model(cfg, load_weights=False).cfg  # the input format; no weights are loaded
    datamodule = build_datamodule(cfg)
    datamodule.scan()
    source = datamodule.sources["train"]
    if len(source) == 0:
        raise ValueError(f"data.root={cfg.data.root!r} has no training images to show.")
    indices = choose_samples(train_labels(datamodule), options["samples"], cfg.seed, len(source))
    name = str(cfg.augment.name)
    transform = datamodule.transform(train=True)

    def show(image) -> np.ndarray:
        return tensor_to_display(image, datamodule.mean, datamodule.std, name in PER_IMAGE_STANDARDISED)

    rows, captions = [], []
    for index in indices:
        sample = source[index]
        rows.append(augment_row(sample, transform, options["variants"], show))
        draws = [f"aug {k + 1}" for k in range(options["variants"])]
        captions.append([caption(datamodule, sample, index), *draws])
    run_dir = create_run_dir(cfg.run_dir)
    write_config(cfg, run_dir)
    title = f"augment={name}  image_size={cfg.data.image_size}  ({datamodule.describe()})"
    png = save_augmentation_grid(rows, captions, run_dir / "augmentations.png", title=title)
    results = {
        "command": "show-augs", "recipe": cfg.get("recipe"), "augment": name,
        "data": datamodule.describe(), "image_size": cfg.data.image_size,
        "samples": [{"index": i, "caption": c[0]} for i, c in zip(indices, captions)],
        "variants": options["variants"], "pixel_size": list(grid_pixel_size(len(rows), len(rows[0]))),
        "png": str(png), "run_dir": str(run_dir),
    }
    write_json(results, run_dir / "results.json")
    log.info("Augmentations (%s, %d images x %d draws): %s", name, len(rows), options["variants"], png)
    return results
