"""Seeded stratified train/val/test splits, stratified k-fold, few-shot draws, and ``splits.json``."""

from __future__ import annotations

import json
import logging
from collections import defaultdict
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from sklearn.model_selection import KFold, StratifiedKFold

from transferkit.data.discover import Item
from transferkit.errors import ConfigError

log = logging.getLogger(__name__)


def check_fraction(value: float, key: str) -> float:
    if not 0.0 <= value < 1.0:
        raise ValueError(f"{key}={value!r} is out of range; use a fraction in [0, 1), e.g. 0.1.")
    return float(value)


def group_by_label(items: Sequence[Item]) -> dict[int, list[Item]]:
    groups: dict[int, list[Item]] = defaultdict(list)
    for item in items:
        groups[item[1]].append(item)
    return dict(sorted(groups.items()))


def carve(
    items: Sequence[Item], fraction: float, seed: int, key: str, classes: Sequence[str]
) -> tuple[list[Item], list[Item]]:
    """Move ``round(fraction * n)`` (at least one) images of every class out of ``items``.

    A class with a single image cannot give one away and stays whole in the first
    list, with a warning naming it.

    Returns:
        ``(kept, carved)``, both in the input order.
    """
    rng = np.random.default_rng(seed)
    carved_ids: set[int] = set()
    positions = group_by_label([(i, label) for i, (_, label) in enumerate(items)])
    for label, members in positions.items():
        if len(members) < 2:
            log.warning(
                "Class %r has %d image(s): too few to split off %s=%s, so it has none there. "
                "Add images to it or provide that split as a folder.",
                classes[label], len(members), key, fraction,
            )
            continue
        take = min(len(members) - 1, max(1, round(fraction * len(members))))
        chosen = rng.permutation(len(members))[:take]
        carved_ids.update(members[j][0] for j in chosen)
    kept = [item for i, item in enumerate(items) if i not in carved_ids]
    carved = [item for i, item in enumerate(items) if i in carved_ids]
    return kept, carved


def carve_unstratified(items: Sequence[Item], fraction: float, seed: int) -> tuple[list[Item], list[Item]]:
    """Multi-label items (bitmask labels) have no one class to stratify by: a seeded random share."""
    if len(items) < 2:
        return list(items), []
    take = min(len(items) - 1, max(1, round(fraction * len(items))))
    carved_ids = set(np.random.default_rng(seed).permutation(len(items))[:take].tolist())
    return ([item for i, item in enumerate(items) if i not in carved_ids],
            [item for i, item in enumerate(items) if i in carved_ids])


def kfold(
    items: Sequence[Item], num_folds: int, fold: int, seed: int, classes: Sequence[str], multilabel: bool = False
) -> tuple[list[Item], list[Item]]:
    """Stratified k-fold (multi-label: plain shuffled k-fold): fold ``fold`` of ``num_folds`` is validation."""
    if num_folds < 2:
        raise ValueError(f"data.num_folds={num_folds!r} is too small; use 2 or more.")
    if not 0 <= fold < num_folds:
        raise ValueError(f"data.fold={fold!r} is out of range; use 0..{num_folds - 1}.")
    if multilabel:
        if len(items) < num_folds:
            raise ValueError(f"{len(items)} images, fewer than data.num_folds={num_folds}; lower data.num_folds.")
        folds = KFold(n_splits=num_folds, shuffle=True, random_state=seed)
        train_ids, val_ids = list(folds.split(np.zeros(len(items))))[fold]
        return [items[i] for i in sorted(train_ids)], [items[i] for i in sorted(val_ids)]
    for label, members in group_by_label(items).items():
        if len(members) < num_folds:
            raise ValueError(
                f"Class {classes[label]!r} has {len(members)} image(s), fewer than "
                f"data.num_folds={num_folds}; lower data.num_folds or add images to it."
            )
    labels = np.array([label for _, label in items])
    folds = StratifiedKFold(n_splits=num_folds, shuffle=True, random_state=seed)
    train_ids, val_ids = list(folds.split(np.zeros(len(labels)), labels))[fold]
    return [items[i] for i in sorted(train_ids)], [items[i] for i in sorted(val_ids)]


def make_splits(
    splits: dict[str, list[Item]],
    classes: Sequence[str],
    val_fraction: float = 0.1,
    test_fraction: float = 0.0,
    seed: int = 0,
    num_folds: int | None = None,
    fold: int | None = None,
    multilabel: bool = False,
) -> dict[str, list[Item]]:
    """Complete the folder's splits: carve missing ``test``/``val`` from ``train``, stratified (multi-label:
    a random share).

    Splits that exist as folders are kept as they are. With ``num_folds`` set,
    train and val are pooled and fold ``fold`` (default 0) becomes the validation split.
    """
    def cut(items: list[Item], fraction: float, seed: int, key: str) -> tuple[list[Item], list[Item]]:
        return carve_unstratified(items, fraction, seed) if multilabel else carve(items, fraction, seed, key, classes)

    if fold is not None and num_folds is None:
        raise ValueError(f"data.fold={fold!r} needs data.num_folds (e.g. data.num_folds=5).")
    check_fraction(val_fraction, "data.val_fraction")
    check_fraction(test_fraction, "data.test_fraction")
    result = {name: list(items) for name, items in splits.items()}
    if "test" not in result and test_fraction > 0:
        result["train"], result["test"] = cut(result["train"], test_fraction, seed, "data.test_fraction")
    if num_folds is not None:
        pool = result["train"] + result.pop("val", [])
        result["train"], result["val"] = kfold(pool, num_folds, fold or 0, seed, classes, multilabel)
    elif "val" not in result and val_fraction > 0:
        result["train"], result["val"] = cut(result["train"], val_fraction, seed + 1, "data.val_fraction")
    elif "val" in splits and val_fraction > 0:
        log.info("Using the val/ folder as it is; data.val_fraction=%s is not applied.", val_fraction)
    return {name: result[name] for name in ("train", "val", "test") if name in result}


def relative_path(path: Path, root: Path) -> str:
    try:
        return path.relative_to(root).as_posix()
    except ValueError:
        return str(path)


def splits_record(
    root: Path, classes: Sequence[str], splits: dict[str, list[Item]]
) -> dict[str, Any]:
    """Split membership as JSON-ready data, paths relative to ``root`` (read back by :func:`load_splits`)."""
    return {
        "root": str(root),
        "classes": list(classes),
        "splits": {
            name: [[relative_path(p, root), label] for p, label in items]
            for name, items in splits.items()
        },
    }


def save_splits(
    path: Path | str, root: Path, classes: Sequence[str], splits: dict[str, list[Item]]
) -> Path:
    """Write split membership to ``path``, normally ``<run_dir>/splits.json``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    record = splits_record(root, classes, splits)
    path.write_text(json.dumps(record, ensure_ascii=False, indent=1), encoding="utf-8")
    return path


def load_splits(
    path: Path | str, root: Path | str | None = None
) -> tuple[tuple[str, ...], dict[str, list[Item]]]:
    """Read a ``splits.json``; ``root`` overrides the saved one (the data moved)."""
    payload = json.loads(Path(path).read_text(encoding="utf-8"))
    base = Path(root if root is not None else payload["root"])
    splits = {
        name: [(base / rel, int(label)) for rel, label in items]
        for name, items in payload["splits"].items()
    }
    return tuple(payload["classes"]), splits


def check_per_class(n: int | None, key: str = "data.train_per_class") -> int | None:
    """``None`` (keep every image) or a positive whole number of images per class."""
    if n is None:
        return None
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
        raise ConfigError(f"{key}={n!r} must be a whole number >= 1 (images kept per class), "
                          f"or null to keep every training image.")
    return int(n)


def draw_per_class(labels: Sequence[int] | np.ndarray, n: int, seed: int) -> np.ndarray:
    """Indices of a seeded draw of ``n`` items per class, sorted; a smaller class keeps all of its items.

    Each class draws from its own generator ``(seed, label)``, so one class's draw does not depend on
    the others, and the draw for a smaller ``n`` is contained in the draw for a larger one.
    """
    n = check_per_class(n)
    labels = np.asarray(labels, dtype=np.int64)
    chosen = [np.empty(0, dtype=np.int64)]
    for label in np.unique(labels):
        members = np.flatnonzero(labels == label)
        chosen.append(np.random.default_rng((seed, int(label))).permutation(members)[:n])
    return np.sort(np.concatenate(chosen))
