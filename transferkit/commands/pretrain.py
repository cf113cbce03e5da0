"""`python -m transferkit pretrain recipe=house_charnet`: train on a source task, export the backbone.

The exported `backbone.safetensors` (+ `backbone.json`, its record) loads anywhere through
`model.weights=/path/to/backbone.safetensors`; copied into `transferkit/assets/` it
becomes a house backbone selectable by name.
"""

from __future__ import annotations

import logging
import sys
from datetime import date
from pathlib import Path

import torch
from omegaconf import DictConfig

from transferkit.errors import lookup
from transferkit.planning.plan import plan_run
from transferkit.training.rundir import write_json
from transferkit.training.session import train_and_test

log = logging.getLogger("transferkit")

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def export_backbone(task, path: Path, dtype: str) -> Path:
    """Save the encoder's state dict as safetensors in `dtype` (float16 halves the file)."""
    from safetensors.torch import save_file

    target = lookup(DTYPES, dtype, "export_dtype")
    state = {k: (v.to(target) if v.is_floating_point() else v).contiguous()
             for k, v in task.encoder.state_dict().items()}
    save_file(state, str(path))
    return path


def run(cfg: DictConfig) -> dict:
    spec, datamodule = plan_run(cfg, "pretrain")
    results, trainer, task, datamodule, run_dir = train_and_test(spec, datamodule)
    if not trainer.is_global_zero:
        return results
    weights = export_backbone(task, run_dir / "backbone.safetensors", cfg.export_dtype)
    record = {
        "backbone": spec.model.backbone,
        "in_chans": spec.model.input.in_chans,
        "image_size": spec.model.input.image_size,
        "mean": list(datamodule.mean),
        "std": list(datamodule.std),
        "source_data": datamodule.describe(),
        "source_classes": list(datamodule.class_names),
        "source_sizes": datamodule.sizes(),
        "epochs": results["epochs"],  # trainer.current_epoch after fit = epochs completed
        "steps": trainer.global_step,
        "command": "python -m transferkit " + " ".join(sys.argv[1:]),
        "source_metrics": {k: v for k, v in results["metrics"].items() if k.startswith("test/")},
        "dtype": cfg.export_dtype,
        "recipe": spec.recipe,
        "date": date.today().isoformat(),
        "file_bytes": weights.stat().st_size,
    }
    write_json(record, run_dir / "backbone.json")
    results["exported_backbone"] = str(weights)
    write_json(results, run_dir / "results.json")
    log.info("Backbone weights: %s (%.1f MB); use model.weights=%s", weights,
             weights.stat().st_size / 1e6, weights)
    return results
