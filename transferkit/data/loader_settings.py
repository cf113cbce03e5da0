"""How DataLoaders run: worker count (`data.num_workers`, `auto` from the CPU count) and pinned memory.

On a GPU, batches are pinned (page-locked) so the host-to-device copy is asynchronous, workers stay
alive between epochs, and `num_workers=auto` gives every device its share of the usable cores. On a
CPU-only run `auto` keeps the long-standing 2 workers: the model itself needs the cores there.
"""

from __future__ import annotations

import os

from transferkit.errors import ConfigError

AUTO = "auto"
CPU_RUN_WORKERS = 2


def usable_cpus() -> int:
    """The cores this process may run on (the affinity mask where the OS has one)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1


def choose_num_workers(requested: int | str, on_gpu: bool, cpus: int, devices: int = 1) -> int:
    """`data.num_workers`: a number >= 0, or `auto` (GPU: one worker per usable core per device, less
    one core for the training process; CPU: 2, as before)."""
    if str(requested) == AUTO:
        if not on_gpu:
            return CPU_RUN_WORKERS
        return max(1, cpus // max(1, devices) - 1)
    if isinstance(requested, bool) or not isinstance(requested, int) or requested < 0:
        raise ConfigError(f"data.num_workers={requested!r} must be a whole number >= 0 or 'auto' "
                          "(one worker per usable core on a GPU).")
    return requested


def check_num_workers(requested: int | str) -> int | str:
    """Fail at construction, not at the first loader, on a bad `data.num_workers`."""
    choose_num_workers(requested, on_gpu=False, cpus=1)
    return requested


def trainer_device(trainer) -> str:
    """`cuda`, `cpu`, ... of the trainer a datamodule is attached to (cpu without one)."""
    strategy = getattr(trainer, "strategy", None) if trainer is not None else None
    device = getattr(strategy, "root_device", None)
    return device.type if device is not None else "cpu"


def loader_settings(requested: int | str, trainer) -> dict:
    """DataLoader keywords for a datamodule attached to `trainer`: workers, pinning, persistence."""
    on_gpu = trainer_device(trainer) == "cuda"
    devices = max(1, int(getattr(trainer, "num_devices", 1) or 1)) if trainer is not None else 1
    workers = choose_num_workers(requested, on_gpu, usable_cpus(), devices)
    return {"num_workers": workers, "pin_memory": on_gpu, "persistent_workers": workers > 0}


DROP_LAST = (AUTO, True, False)


def check_drop_last(setting: bool | str) -> bool | str:
    if setting not in DROP_LAST:
        raise ConfigError(f"data.drop_last={setting!r} must be auto (drop a last training batch of one "
                          "image, which batch norm cannot train on), true or false.")
    return setting


def drops_last(setting: bool | str, images: int, batch_size: int, trainer) -> bool:
    """Whether the training loader drops its last, shorter batch (`data.drop_last`). `auto` drops it
    only when it would hold one image: batch norm cannot normalise over one value per channel (a
    ResNet's last stage at 32 px is 1 x 1). Under DDP each rank's share (padded up) is what counts."""
    if setting != AUTO:
        return bool(setting)
    ranks = max(1, int(getattr(trainer, "world_size", 1) or 1)) if trainer is not None else 1
    return -(-images // ranks) % batch_size == 1
