"""The rows of a `data.manifest` CSV, checked before any image is decoded.

Every problem names the manifest and its rows (CSV line numbers, header = line 1): a row without a label,
a row whose file does not exist, one path listed with different labels or in different splits, and a
label of val/test that no train row has (the model could never predict it). A path listed twice with
the same label and split is kept once.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

SHOWN_ROWS = 5  # rows named per problem; the message says how many more there are


@dataclass(frozen=True)
class ManifestRow:
    """One CSV row: its line, split (train/val/test), the file (under data.root) and its label(s)."""

    line: int
    split: str
    path: Path
    labels: tuple[str, ...]

    def named(self, root: Path) -> str:
        return f"line {self.line} ({self.path.relative_to(root) if self.path.is_relative_to(root) else self.path})"


def listing(rows: list[ManifestRow], root: Path) -> str:
    shown = ", ".join(row.named(root) for row in rows[:SHOWN_ROWS])
    return shown + (f" and {len(rows) - SHOWN_ROWS} more" if len(rows) > SHOWN_ROWS else "")


def check_rows(rows: list[ManifestRow], manifest: Path, root: Path, *, empty_ok: bool = False) -> list[ManifestRow]:
    """The rows with exact repeats dropped; raises for missing files, empty labels (unless `empty_ok`:
    multi-label's "no label") and a path given two different labels or splits."""
    where = f"data.manifest={str(manifest)!r}"
    empty = [row for row in rows if not row.labels and not empty_ok]
    if empty:
        raise ValueError(f"{where}: {len(empty)} row(s) have an empty label: {listing(empty, root)}. Give each "
                         "row its class, or remove the row.")
    missing = [row for row in rows if not row.path.is_file()]
    if missing:
        raise FileNotFoundError(f"{where}: {len(missing)} row(s) name a file that does not exist under "
                                f"data.root={str(root)!r}: {listing(missing, root)}. Fix the paths (relative to "
                                "data.root) or remove those rows.")
    first: dict[Path, ManifestRow] = {}
    kept, clashes = [], []
    for row in rows:
        seen = first.get(row.path)
        if seen is None:
            first[row.path] = row
            kept.append(row)
        elif (set(seen.labels), seen.split) != (set(row.labels), row.split):
            clashes.append((seen, row))
    if clashes:
        shown = "; ".join(f"{a.named(root)} says {'/'.join(a.labels) or '(none)'} in {a.split}, line {b.line} "
                          f"says {'/'.join(b.labels) or '(none)'} in {b.split}" for a, b in clashes[:SHOWN_ROWS])
        raise ValueError(f"{where}: {len(clashes)} path(s) are listed twice with different labels or splits: "
                         f"{shown}. Keep one row per file.")
    if len(kept) < len(rows):
        log.warning("%s: %d repeated row(s) (same path, label and split) counted once.", where, len(rows) - len(kept))
    return kept


def check_known_labels(rows: list[ManifestRow], manifest: Path, root: Path) -> None:
    """Labels of val/test rows must appear on train rows: name the rows whose label train lacks."""
    train = {label for row in rows if row.split == "train" for label in row.labels}
    unknown = [row for row in rows if row.split != "train" and set(row.labels) - train]
    if unknown:
        labels = sorted({label for row in unknown for label in row.labels} - train)
        raise ValueError(f"data.manifest={str(manifest)!r}: labels {labels} appear in val/test rows but on no train "
                         f"row, so the model could never predict them: {listing(unknown, root)}. Add train rows "
                         "with those labels, or remove those rows.")
