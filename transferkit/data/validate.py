"""Up-front checks before training: unreadable files, class problems, a summary table (leaked copies:
`fingerprints`)."""

from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import NamedTuple, Sequence

from transferkit.data.decode import UnreadableImageError, open_image
from transferkit.data.discover import Item
from transferkit.data.multilabel import positive_counts

log = logging.getLogger(__name__)

# Imbalance beyond this max/min class ratio earns a hint about data.balance.
IMBALANCE_HINT_RATIO = 10.0
# Decoding at this size is enough to prove a JPEG is intact, and much faster.
CHECK_DECODE_SIZE = 32


class BadFile(NamedTuple):
    """An unusable file and why; unpacks as ``(path, reason)``."""

    path: Path
    reason: str

    def __str__(self) -> str:
        return f"{self.path}: {self.reason}"


def check_image(path: Path) -> BadFile | None:
    """Decode ``path`` completely; return why it is unusable, or ``None`` when it is fine."""
    try:
        open_image(path, min_size=CHECK_DECODE_SIZE)
    except UnreadableImageError as error:
        return BadFile(path, error.reason)
    return None


def find_unreadable(paths: Sequence[Path], num_workers: int = 0) -> list[BadFile]:
    """Every file in ``paths`` that cannot be decoded, in input order (threads decode in parallel)."""
    if num_workers > 1:
        with ThreadPoolExecutor(max_workers=num_workers) as pool:
            results = list(pool.map(check_image, paths, chunksize=16))
    else:
        results = [check_image(path) for path in paths]
    return [bad for bad in results if bad is not None]


def drop_unreadable(
    splits: dict[str, list[Item]], bad: Sequence[BadFile], max_bad_fraction: float = 0.05
) -> dict[str, list[Item]]:
    """Skip the ``bad`` files when they are at most ``max_bad_fraction`` of all; otherwise stop.

    Raises:
        ValueError: listing every bad file, when there are too many to skip.
    """
    if not 0.0 <= max_bad_fraction <= 1.0:
        raise ValueError(
            f"data.max_bad_fraction={max_bad_fraction!r} is out of range; use a fraction in [0, 1]."
        )
    if not bad:
        return splits
    total = sum(len(items) for items in splits.values())
    listing = "\n".join(f"  {item}" for item in bad)
    if len(bad) > max_bad_fraction * total:
        raise ValueError(
            f"{len(bad)} of {total} images ({len(bad) / total:.1%}) cannot be read, more than "
            f"data.max_bad_fraction={max_bad_fraction}. Fix or remove them, or raise "
            f"data.max_bad_fraction to skip them:\n{listing}"
        )
    log.warning(
        "Skipping %d of %d images (%.1f%%) that cannot be read:\n%s",
        len(bad), total, 100 * len(bad) / total, listing,
    )
    dropped = {item.path for item in bad}
    return {name: [it for it in items if it[0] not in dropped] for name, items in splits.items()}


def class_counts(splits: dict[str, list[Item]], num_classes: int, multilabel: bool = False) -> dict[str, list[int]]:
    """``split -> [count of class 0, count of class 1, ...]`` (multi-label: images carrying each class)."""
    if multilabel:
        return {name: positive_counts([label for _, label in items], num_classes).tolist()
                for name, items in splits.items()}
    counts = {name: [0] * num_classes for name in splits}
    for name, items in splits.items():
        for _, label in items:
            counts[name][label] += 1
    return counts


def check_multilabel_classes(classes: Sequence[str], counts: dict[str, list[int]]) -> list[str]:
    """Raise for a class no train image carries once val/test are split off (named); warnings for val/test."""
    absent = [c for c, n in zip(classes, counts["train"]) if n == 0]
    if absent:
        raise ValueError(f"Classes {absent} have no positive image in train (after val/test were split off), so "
                         "the model cannot learn them; add train images carrying them, give the manifest a split "
                         "column that keeps some in train, or drop those labels.")
    return [f"{split} has no images carrying classes {missing}; their {split} AP is undefined."
            for split in ("val", "test")
            for missing in [[c for c, n in zip(classes, counts.get(split, [])) if n == 0]] if missing]


def summary_table(classes: Sequence[str], counts: dict[str, list[int]]) -> str:
    """A plain-text table: one row per class, one column per split, plus totals."""
    names = list(counts)
    width = max([len("class"), len("total"), *(len(c) for c in classes)])
    header = f"{'class':<{width}} " + " ".join(f"{n:>7}" for n in names)
    rows = [header, "-" * len(header)]
    for label, name in enumerate(classes):
        rows.append(f"{name:<{width}} " + " ".join(f"{counts[n][label]:>7}" for n in names))
    rows.append(f"{'total':<{width}} " + " ".join(f"{sum(counts[n]):>7}" for n in names))
    return "\n".join(rows)


def check_classes(
    classes: Sequence[str], counts: dict[str, list[int]], empty_folders: Sequence[str] = ()
) -> list[str]:
    """Raise for problems that make training meaningless; return warnings for the rest."""
    train = counts["train"]
    if sum(1 for n in train if n > 0) < 2:
        raise ValueError(
            f"Only one class with images was found ({[c for c, n in zip(classes, train) if n]}); "
            f"classification needs at least 2 class folders. Add a folder per class."
        )
    notes = [
        f"Class folder {folder!r} has no images and is ignored; add images or remove it."
        for folder in empty_folders
    ]
    for split in ("val", "test"):
        missing = [c for c, n in zip(classes, counts.get(split, [])) if n == 0]
        if missing:
            notes.append(
                f"{split} has no images of classes {missing}; their {split} metrics are "
                f"undefined. Add images to {split}/<class> or let a fraction be split off."
            )
    largest, smallest = max(train), min(n for n in train if n > 0)
    if largest / smallest >= IMBALANCE_HINT_RATIO:
        notes.append(
            f"Classes are imbalanced {largest}:{smallest} (largest:smallest in train); consider "
            f"data.balance=weights or data.balance=sampler."
        )
    return notes
