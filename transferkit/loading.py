"""Reload a trained task from a checkpoint, without Hydra."""

from __future__ import annotations

from pathlib import Path

import torch

from transferkit.errors import ConfigError


def require(value, key: str, hint: str) -> Path:
    """An existing path given as config `key`, or an error saying what to pass."""
    if value in (None, ""):
        raise ConfigError(f"{key} is required: pass {key}=<path> ({hint}).")
    path = Path(str(value)).expanduser()
    if not path.exists():
        raise FileNotFoundError(f"{key}={str(value)!r} does not exist ({hint}).")
    return path


def load_task(path: str | Path):
    """Load the task stored in a transferkit checkpoint (classification or segmentation)."""
    from transferkit.builders import task_classes

    checkpoint = torch.load(path, map_location="cpu", weights_only=False)
    name = checkpoint.get("transferkit_task")
    classes = {cls.__name__: cls for cls in task_classes().values()}
    if name not in classes:
        raise ValueError(f"ckpt_path={str(path)!r} is not a transferkit checkpoint "
                         f"(task {name!r}); pass a file from <run_dir>/checkpoints/.")
    task = classes[name].load_from_checkpoint(path, map_location="cpu")
    task.eval()
    return task
