"""The rows of a `data.manifest` CSV, checked before any image is decoded.

Every problem names the manifest and its rows (CSV line numbers, header = line 1): a row without a label,
a row whose file does not exist, one path listed with different labels or in different splits, and a
label of val/test that no train row has (the model could never predict it). A path listed twice with
the same label and split is kept once.

Three forms, told apart by the header (`read_rows`): `path,label` (one class per image), `path,labels`
(multi-label: `;`-separated, empty = no label) and one-hot `path,<class1>,<class2>,...` with 0/1 cells
(multi-label); each may have a `split` column. A multi-label class with no positive train row is named.
"""

from __future__ import annotations

import csv
import logging
import unicodedata
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

SHOWN_ROWS = 5  # rows named per problem; the message says how many more there are
SPLIT_ALIASES: dict[str, str] = {"train": "train", "val": "val", "valid": "val", "validation": "val", "test": "test"}
SEPARATOR = ";"  # the `labels` column's separator
FORMS = ("label", "labels", "onehot")  # single-label, multi-label as names, multi-label as 0/1 columns


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


def class_name(text: str) -> str:
    """The class name of a folder or a CSV cell: exactly its text, Unicode-normalised (NFC)."""
    return unicodedata.normalize("NFC", text)


def manifest_form(fields: list[str], manifest: Path) -> str:
    """`label`, `labels` or `onehot`, from the header; raises for a header that is none of them."""
    where = f"data.manifest={str(manifest)!r}"
    if "path" not in fields:
        missing = sorted({"path"} | (set() if {"label", "labels"} & set(fields) else {"label"}))
        raise ValueError(f"{where} lacks columns {missing}; its header must be path,label (optionally ,split), "
                         f"path,labels (a ;-separated set), or path,<class1>,<class2>,... with 0/1 cells; got "
                         f"{fields!r}.")
    if "label" in fields and "labels" in fields:
        raise ValueError(f"{where} has both 'label' and 'labels' columns; keep 'label' (one class per image) or "
                         "'labels' (a ;-separated set per image).")
    if "label" in fields or "labels" in fields:
        return "label" if "label" in fields else "labels"
    if not [f for f in fields if f not in ("path", "split")]:
        raise ValueError(f"{where} lacks columns ['label']; its header must be path,label (optionally ,split), "
                         f"path,labels, or path,<class1>,<class2>,... with 0/1 cells; got {fields!r}.")
    return "onehot"


def row_labels(row: dict, form: str, columns: list[str], line: int, manifest: Path) -> tuple[str, ...]:
    """One row's label set in its manifest `form` (one-hot cells must be 0 or 1)."""
    if form == "label":
        name = class_name((row.get("label") or "").strip())
        return (name,) if name else ()
    if form == "labels":
        return tuple(dict.fromkeys(n for n in (class_name(n.strip()) for n in (row.get("labels") or "").split(SEPARATOR)) if n))
    labels = []
    for column in columns:
        cell = (row.get(column) or "").strip()
        if cell not in ("0", "1", "0.0", "1.0"):
            raise ValueError(f"data.manifest={str(manifest)!r} line {line}: column {column!r} is {cell!r}; one-hot "
                             "cells must be 0 or 1.")
        if cell.startswith("1"):
            labels.append(column)
    return tuple(labels)


def read_rows(manifest: Path, root: Path) -> tuple[list[ManifestRow], str, tuple[str, ...]]:
    """The checked rows of a manifest, its form (`FORMS`) and, for one-hot, its class columns."""
    if not manifest.is_file():
        raise FileNotFoundError(f"data.manifest={str(manifest)!r} does not exist.")
    rows = []
    with manifest.open(newline="", encoding="utf-8-sig") as handle:
        reader = csv.DictReader(handle)
        fields = [class_name(f.strip()) for f in reader.fieldnames or ()]
        reader.fieldnames = fields
        form = manifest_form(fields, manifest)
        columns = [f for f in fields if f not in ("path", "split")] if form == "onehot" else []
        for line, row in enumerate(reader, start=2):
            split = SPLIT_ALIASES.get((row.get("split") or "train").strip().lower())
            if split is None:
                raise ValueError(f"data.manifest={str(manifest)!r} line {line}: split={row['split']!r} "
                                 f"is unknown; use one of {sorted(SPLIT_ALIASES)}.")
            labels = row_labels(row, form, columns, line, manifest)
            rows.append(ManifestRow(line, split, root / (row["path"] or "").strip(), labels))
    rows = check_rows(rows, manifest, root, empty_ok=form != "label")
    check_known_labels(rows, manifest, root)
    if form == "onehot":
        check_train_positives(rows, columns, manifest)
    return rows, form, tuple(columns)


def check_train_positives(rows: list[ManifestRow], classes: list[str], manifest: Path) -> None:
    """A multi-label class no train row carries cannot be learnt: name it."""
    train = {label for row in rows if row.split == "train" for label in row.labels}
    absent = [name for name in classes if name not in train]
    if absent:
        raise ValueError(f"data.manifest={str(manifest)!r}: classes {absent} have no positive train row, so the "
                         "model cannot learn them; add train images that carry them, or drop those columns.")
