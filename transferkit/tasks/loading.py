"""Reload a trained task from a checkpoint, without Hydra and without running code from the file.

Importing this module loads neither Lightning nor timm (predict from an exported model imports it):
the task classes are imported when a checkpoint is loaded.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import yaml

from transferkit.data.transforms import trains_with_flips
from transferkit.errors import ConfigError
from transferkit.runtime.torch_files import read_torch_file
from transferkit.tasks.tta import check_tta

log = logging.getLogger("transferkit")

# A finetune=auto run whose model is the ensemble of the race's finishers (training.race.ensemble) names them here.
ENSEMBLE_FILE = "checkpoints/ensemble.json"
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
    """A checkpoint's contents, read with `weights_only=True` (see `transferkit.runtime.torch_files`).

    `fit ckpt_path=` calls it before Lightning resumes from the file, so a refused file stops the
    run in one line, before anything is built.
    """
    checkpoint = read_torch_file(path, key=key, hint=CHECKPOINT_HINT)
    if not isinstance(checkpoint, dict) or "state_dict" not in checkpoint:
        raise ConfigError(f"{key}={str(path)!r} holds {type(checkpoint).__name__}, not a Lightning "
                          f"checkpoint (no 'state_dict'); {CHECKPOINT_HINT}.")
    return checkpoint


def task_classes() -> dict[str, type]:
    """`task.kind` -> its task class (segmentation only where its extras import)."""
    from transferkit.tasks.classification import ClassificationTask  # lazy: Lightning and timm, for a checkpoint only

    from transferkit.tasks.multilabel import MultilabelTask  # lazy: as above

    table: dict[str, type] = {"classification": ClassificationTask, "multilabel": MultilabelTask}
    try:
        from transferkit.tasks.segmentation import SegmentationTask  # lazy: as above
    except ImportError:  # segmentation extras not importable: classification still works
        return table
    table["segmentation"] = SegmentationTask
    return table


def load_task(path: str | Path):
    """Load the task stored in a transferkit checkpoint (classification, multilabel or segmentation).

    The file is read weights-only twice: here to learn the task class, then by Lightning.
    """
    name = read_checkpoint(path).get("transferkit_task")
    classes = {cls.__name__: cls for cls in task_classes().values()}
    if name not in classes:
        raise ConfigError(f"ckpt_path={str(path)!r} is not a transferkit checkpoint "
                          f"(task {name!r}); {CHECKPOINT_HINT}.")
    task = classes[name].load_from_checkpoint(path, map_location="cpu", weights_only=True)
    task.eval()
    return task


# -- ensembles: several checkpoints, or the folds of a cv run ----------------------------------
ENSEMBLE_HINT = ("pass a checkpoint, a list of them (ckpt_path=[a.ckpt,b.ckpt]), a cv run directory "
                 "(its folds/<k>/checkpoints/best.ckpt) or a fit run directory (its checkpoints/best.ckpt)")


def is_many(value) -> bool:
    return isinstance(value, (list, tuple)) or type(value).__name__ == "ListConfig"


def run_checkpoints(directory: Path, key: str = "ckpt_path") -> list[Path]:
    """The checkpoints a run directory stands for: a cv run's fold bests (in fold order), a
    `finetune=auto` run's ensemble (`checkpoints/ensemble.json`: its members), or a fit run's best."""
    record = directory / ENSEMBLE_FILE
    if record.is_file():
        members = [directory / p for p in json.loads(record.read_text())["members"]]
        missing = [str(p) for p in members if not p.is_file()]
        if missing:
            raise FileNotFoundError(f"{key}={str(directory)!r}: its ensemble ({ENSEMBLE_FILE}) names "
                                    f"{', '.join(missing)}, which is gone; use the best single model: "
                                    f"{key}={directory / 'checkpoints' / 'best.ckpt'}.")
        return members
    folds = directory / "folds"
    if folds.is_dir():
        found = [p for p in folds.glob("*/checkpoints/best.ckpt") if p.parent.parent.name.isdigit()]
        if not found:
            raise FileNotFoundError(f"{key}={str(directory)!r} is a cv run with no finished fold "
                                    "(no folds/<k>/checkpoints/best.ckpt); resume it: "
                                    f"python -m transferkit cv resume={directory}.")
        return sorted(found, key=lambda p: int(p.parent.parent.name))
    best = directory / "checkpoints" / "best.ckpt"
    if best.is_file():
        return [best]
    raise FileNotFoundError(f"{key}={str(directory)!r} is a folder but holds no checkpoints/best.ckpt nor "
                            f"folds/<k>/checkpoints/best.ckpt; {ENSEMBLE_HINT}.")


def checkpoint_paths(value, key: str = "ckpt_path") -> list[Path]:
    """Every checkpoint `ckpt_path` names: one file, a list, or run directories (expanded)."""
    values = list(value) if is_many(value) else [value]
    if not values:
        raise ConfigError(f"{key}=[] names no checkpoint; {ENSEMBLE_HINT}.")
    paths: list[Path] = []
    for item in values:
        path = require(item, key, ENSEMBLE_HINT)
        paths += run_checkpoints(path, key) if path.is_dir() else [path]
    return paths


def check_same_classes(tasks: list, paths: list[Path], key: str = "ckpt_path") -> None:
    """Ensemble members must be one kind of task with one class list (in one order)."""
    first, first_path = tasks[0], paths[0]
    for task, path in zip(tasks[1:], paths[1:]):
        if type(task) is not type(first):
            raise ConfigError(f"{key}: {str(path)!r} is a {type(task).__name__} but {str(first_path)!r} is a "
                              f"{type(first).__name__}; an ensemble's members must solve one task.")
        if list(task.class_names) != list(first.class_names):
            raise ConfigError(f"{key}: {str(path)!r} has classes {list(task.class_names)} but {str(first_path)!r} "
                              f"has {list(first.class_names)}; an ensemble averages probabilities class by class, "
                              "so its members must share one class list. Leave out the odd one.")


def trained_flips(task, path: Path) -> bool:
    """Whether the checkpoint's model was trained on mirrored images (`tta=flip` flips only those).

    Newer checkpoints record it (data_config.flips); for older ones the run's config.yaml beside
    the checkpoint tells; without it, no flip (never show a model a mirror image it never saw).
    """
    data = dict(task.hparams.get("data_config") or {})
    if "flips" in data:
        return bool(data["flips"])
    saved = Path(path).resolve().parent.parent / "config.yaml"
    if saved.is_file():
        augment = (yaml.safe_load(saved.read_text()) or {}).get("augment") or {}
        segmentation = task.kind == "segmentation"
        flips = trains_with_flips(str(augment.get("name", data.get("augment", "none"))),
                                  segmentation or bool(augment.get("flips", True)))
        log.info("%s predates the flips record; its run's config.yaml says training %s flip images.",
                 path, "did" if flips else "did not")
        return flips
    log.info("%s records no augment.flips and has no config.yaml beside it: tta=flip leaves it unflipped.", path)
    return False


def member_tta(requested: str, tasks: list, paths: list[Path]) -> list[str]:
    """Each member's TTA: `requested`, except `none` where its views would mislead or fail, with a
    one-line warning naming those members (flip: trained without flips; multiscale: a backbone with a
    fixed input size, e.g. ViT)."""
    from transferkit.models.backbones import has_fixed_input_size  # lazy: timm, for tta=multiscale only

    if requested == "flip":
        unsuited = [not trained_flips(task, path) for task, path in zip(tasks, paths)]
        why = ("trained without flips (augment.flips=false, or augment.name without a flip), so a mirror "
               "image may change its class")
    elif requested == "multiscale":
        backbones = [str(dict(task.hparams.get("model") or {}).get("backbone", "")) for task in tasks]
        unsuited = [has_fixed_input_size(name) for name in backbones]
        why = "has a fixed input size (position embeddings)"
    else:
        return [requested] * len(tasks)
    if any(unsuited):
        names = ", ".join(str(p) for p, u in zip(paths, unsuited) if u)
        log.warning("tta=%s: %s %s; predicting without tta=%s there.", requested, names, why, requested)
    return ["none" if u else requested for u in unsuited]


def load_ensemble(value, tta: str = "none", key: str = "ckpt_path"):
    """The `EnsembleTask` of every checkpoint `value` names (one checkpoint makes an ensemble of one)."""
    from transferkit.tasks.ensemble import EnsembleTask  # lazy: Lightning, for a checkpoint only

    paths = checkpoint_paths(value, key)
    tasks = [load_task(path) for path in paths]
    check_same_classes(tasks, paths, key)
    modes = member_tta(check_tta(tta), tasks, paths)
    if len(paths) > 1:
        log.info("Ensemble of %d checkpoints: %s", len(paths), ", ".join(str(p) for p in paths))
    return EnsembleTask(tasks, modes, ensemble_thresholds(paths)).eval(), paths


def ensemble_thresholds(paths: list[Path]) -> list[float] | None:
    """A `finetune=auto` multi-label run's ensemble thresholds (tuned on the ensemble's validation
    probabilities, `ENSEMBLE_FILE`'s `thresholds`), when `paths` are exactly the members it names, in its
    order; otherwise None (the members' own thresholds, averaged)."""
    if not paths:
        return None
    run_dir = Path(paths[0]).resolve().parent.parent.parent  # <run>/checkpoints/members/<name>.ckpt
    record = run_dir / ENSEMBLE_FILE
    if not record.is_file():
        return None
    saved = json.loads(record.read_text())
    members = [(run_dir / p).resolve() for p in saved.get("members", [])]
    if saved.get("thresholds") is None or members != [Path(p).resolve() for p in paths]:
        return None
    return [float(t) for t in saved["thresholds"]]


def load_model(paths: list, tta: str = "none"):
    """One checkpoint without TTA: its task; several, or TTA: their `EnsembleTask` (see `load_ensemble`)."""
    if len(paths) == 1 and tta == "none":
        return load_task(paths[0])
    return load_ensemble(list(paths), tta)[0]
