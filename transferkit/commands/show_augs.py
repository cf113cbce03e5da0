"""`python -m transferkit show-augs [recipe=...] [data.root=...] [augment=...]`: look at the augmentation.

Takes a few training images (classes in turn), applies the configured train pipeline several
times to each, undoes the normalisation and writes `augmentations.png` into a new run directory:
one row per image, the decoded original first. Segmentation data is shown with its mask
overlaid, so misaligned masks are visible at a glance (`transferkit.evaluation.reports.augment_grid`).
"""

from __future__ import annotations

import logging

import pytorch_lightning as pl
from omegaconf import DictConfig, OmegaConf

from transferkit.evaluation.reports.augment_grid import (draw_augmentations, grid_pixel_size,
                                                         save_augmentation_grid, show_augs_options)
from transferkit.planning.plan import plan_spec
from transferkit.training.builders import build_datamodule
from transferkit.training.rundir import create_run_dir, write_config, write_json

log = logging.getLogger("transferkit")


def run(cfg: DictConfig) -> dict:
    given = cfg.get("show_augs")
    options = show_augs_options(OmegaConf.to_container(given, resolve=True) if given is not None else None)
    pl.seed_everything(cfg.seed, verbose=False)  # the pipeline draws from torch's seed
    spec = plan_spec(cfg, "show-augs", load_weights=False)  # the input format; no weights are loaded
    datamodule = build_datamodule(spec.data, spec.model.input.in_chans)
    datamodule.scan()
    if len(datamodule.sources["train"]) == 0:
        raise ValueError(f"data.root={spec.data.root!r} has no training images to show.")
    name, variants = spec.data.augment.name, options["variants"]
    grid = draw_augmentations(datamodule, name, options["samples"], variants, spec.seed)
    run_dir = create_run_dir(spec.outputs.run_dir)
    write_config(spec.config, run_dir)
    title = f"augment={name}  image_size={spec.data.image_size}  ({datamodule.describe()})"
    png = save_augmentation_grid(grid.rows, grid.captions, run_dir / "augmentations.png", title=title)
    results = {
        "command": "show-augs", "recipe": spec.recipe, "augment": name,
        "data": datamodule.describe(), "image_size": spec.data.image_size,
        "samples": [{"index": i, "caption": c[0]} for i, c in zip(grid.indices, grid.captions)],
        "variants": variants, "pixel_size": list(grid_pixel_size(len(grid.rows), len(grid.rows[0]))),
        "png": str(png), "run_dir": str(run_dir),
    }
    write_json(results, run_dir / "results.json")
    log.info("Augmentations (%s, %d images x %d draws): %s", name, len(grid.rows), variants, png)
    return results
