"""Reload a trained task from a checkpoint, without Hydra and without running code from the file."""

from __future__ import annotations

from pathlib import Path

from transferkit.errors import ConfigError
from transferkit.torch_files import read_torch_file

CHECKPOINT_HINT = "pass a checkpoint written by fit (<run_dir>/checkpoints/best.ckpt or last.ckpt)"


def require(value, key: str, hint: str) -> Path:
    """An existing path given as config `key`, or an error saying what to pass."""
    if value in (None, ""):
        raise ConfigError(f"{key} is required: pass {key}=<path> ({hint}).")
    path = Path(str(value)).expanduser()
    if not path.exists():
        raise FileNotFoundError(f"{key}={str(value)!r} does not exist ({hint}).")
    return path


def read_checkpoint(path: str | Path, key: str = "ckpt_path") -> dict:
    """A checkpoint's contents, read with `weights_only=True` (see `transferkit.torch_files`).

    `fit ckpt_path=` calls it before Lightning resumes from the file, so a refused file stops the
    run in one line, before anything is built.
    """
    checkpoint = read_torch_file(path, key=key, hint=CHECKPOINT_HINT)
    if not isinstance(checkpoint, dict) or "state_dict" not in checkpoint:
        raise ConfigError(f"{key}={str(path)!r} holds {type(checkpoint).__name__}, not a Lightning "
                          f"checkpoint (no 'state_dict'); {CHECKPOINT_HINT}.")
    return checkpoint


def load_task(path: str | Path):
    """Load the task stored in a transferkit checkpoint (classification or segmentation).

    The file is read weights-only twice: here to learn the task class, then by Lightning.
    """
    from transferkit.builders import task_classes

    name = read_checkpoint(path).get("transferkit_task")
    classes = {cls.__name__: cls for cls in task_classes().values()}
    if name not in classes:
        raise ConfigError(f"ckpt_path={str(path)!r} is not a transferkit checkpoint "
                          f"(task {name!r}); {CHECKPOINT_HINT}.")
    task = classes[name].load_from_checkpoint(path, map_location="cpu", weights_only=True)
    task.eval()
    return task
