"""Act on an audit without touching the folder: `data.exclude` (files left out) and `data.relabel`
(labels overridden), both read from CSV files whose paths are relative to `data.root`.

Both apply after the splits are made, so every other image keeps its split; both are recorded in
`splits.json` (and `results.json`). Files named in `data.exclude` are not even decoded by the scan.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

from transferkit.data.discover import Item
from transferkit.data.splits import relative_path
from transferkit.errors import ConfigError

SHOWN = 5


@dataclass(frozen=True)
class Curation:
    """What `data.exclude` leaves out and `data.relabel` changes, by path relative to the root."""

    exclude_file: str | None = None
    relabel_file: str | None = None
    excluded: frozenset[str] = frozenset()
    labels: dict[str, str] = field(default_factory=dict)  # path -> new class name

    @property
    def empty(self) -> bool:
        return not self.excluded and not self.labels


def read_rows(csv_file: str | Path, key: str, columns: Sequence[str]) -> list[dict[str, str]]:
    """The rows of `csv_file`, which must have `columns`; errors name `key`."""
    path = Path(str(csv_file)).expanduser()
    if not path.is_file():
        raise ConfigError(f"{key}={str(csv_file)!r} is not a file; give a CSV with a {'/'.join(columns)} header.")
    with path.open(newline="", encoding="utf-8-sig") as handle:
        reader = csv.DictReader(handle)
        missing = [c for c in columns if c not in (reader.fieldnames or [])]
        if missing:
            raise ConfigError(f"{key}={str(csv_file)!r} has no {missing[0]!r} column (its header: "
                              f"{reader.fieldnames}); it needs the columns {list(columns)}.")
        return [row for row in reader if (row.get(columns[0]) or "").strip()]


def relative(value: str, root: Path) -> str:
    """A CSV path as the path relative to `root` (a path given absolute is made relative)."""
    path = Path(value.strip())
    if not path.is_absolute():
        return path.as_posix()
    for base in (root, root.resolve()):
        inside = relative_path(path, base)
        if inside != str(path):
            return inside
    return path.as_posix()


def read_curation(root: Path, exclude: str | None, relabel: str | None, classes: Sequence[str]) -> Curation:
    """Read `data.exclude` (a `path` column) and `data.relabel` (`path,label`); labels must be classes."""
    excluded = frozenset(relative(row["path"], root) for row in read_rows(exclude, "data.exclude", ("path",))) \
        if exclude else frozenset()
    labels: dict[str, str] = {}
    for row in read_rows(relabel, "data.relabel", ("path", "label")) if relabel else []:
        label = (row["label"] or "").strip()
        if label not in classes:
            raise ConfigError(f"data.relabel={str(relabel)!r}: label {label!r} (for {row['path']!r}) is not a class "
                              f"of data.root; use one of {list(classes)}.")
        labels[relative(row["path"], root)] = label
    return Curation(str(exclude) if exclude else None, str(relabel) if relabel else None, excluded, labels)


def check_known(curation: Curation, root: Path, splits: dict[str, list[Item]]) -> None:
    """Every path the CSV files name must be an image of the folder (a typo must not pass silently)."""
    known = {relative_path(path, root) for items in splits.values() for path, _ in items}
    for key, file, paths in (("data.exclude", curation.exclude_file, curation.excluded),
                             ("data.relabel", curation.relabel_file, curation.labels)):
        unknown = sorted(set(paths) - known)
        if unknown:
            raise ConfigError(f"{key}={file!r}: {len(unknown)} path(s) are no image of data.root={str(root)!r} "
                              f"(e.g. {unknown[:SHOWN]}); paths are relative to data.root, as audit writes them.")


def apply_curation(splits: dict[str, list[Item]], root: Path, classes: Sequence[str],
                   curation: Curation) -> tuple[dict[str, list[Item]], dict]:
    """The splits without the excluded files and with the new labels, and the record for splits.json."""
    if curation.empty:
        return splits, {}
    result: dict[str, list[Item]] = {}
    removed, changed = [], []
    for name, items in splits.items():
        kept = []
        for path, label in items:
            rel = relative_path(path, root)
            if rel in curation.excluded:
                removed.append(rel)
                continue
            new = classes.index(curation.labels[rel]) if rel in curation.labels else label
            if new != label:
                changed.append([rel, classes[label], classes[new]])
            kept.append((path, new))
        result[name] = kept
    record = {}
    if curation.exclude_file:
        record["exclude"] = {"file": curation.exclude_file, "paths": sorted(removed)}
    if curation.relabel_file:
        record["relabel"] = {"file": curation.relabel_file, "changes": sorted(changed)}
    return result, record


def curation_summary(split_record: dict) -> dict:
    """For results.json: which files data.exclude and data.relabel read, and how many images they changed."""
    summary = {}
    for key, listed in (("exclude", "paths"), ("relabel", "changes")):
        if key in split_record:
            summary[key] = {"file": split_record[key]["file"], "images": len(split_record[key][listed])}
    return summary
