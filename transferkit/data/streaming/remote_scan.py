"""Scan a folder in an object store into splits by the local folder's rules, listing objects only.

The layouts, class names, ignored files, item order (that of `os.walk`) and split carving are those of
`discover` + `splits`, so the same images give the same splits as on local disk. Nothing is decoded
here: an unreadable image is found when it is first read, then skipped and recorded (`data.vanished`).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import Any

from transferkit.data.discover import (
    EXPECTED_LAYOUT,
    SPLIT_ALIASES,
    SPLITS,
    check_split_classes,
    class_name,
    label_items,
)
from transferkit.data.folders import FolderScan
from transferkit.data.splits import make_splits
from transferkit.data.streaming.store import ObjectStore, check_store
from transferkit.data.validate import check_classes, class_counts
from transferkit.data.walk import Findings, is_ignored, is_image_file

log = logging.getLogger(__name__)


def walk_order(parts: tuple[str, ...]) -> tuple:
    """The sort key that lists a folder's files as `os.walk` does: a folder's own files (sorted), then
    each sub-folder (sorted) in turn."""
    return tuple((1, name) for name in parts[:-1]) + ((0, parts[-1]),)


def choose_layout(keys: list[tuple[str, ...]], uri: str) -> tuple[str, dict[str, str | None]]:
    """`splits` when a train/ folder exists, else `classes`: split -> its top folder (None: the root)."""
    tops = sorted({parts[0] for parts in keys if len(parts) > 1 and not is_ignored(parts[0])})
    found: dict[str, str] = {}
    for name in tops:
        split = SPLIT_ALIASES.get(name.lower())
        if split is None:
            continue
        if split in found:
            raise ValueError(f"data.root={uri!r} has both {found[split]}/ and {name}/; keep one {split} folder.")
        found[split] = name
    others = [name for name in tops if name.lower() not in SPLIT_ALIASES]
    if "train" in found:
        if others:
            log.warning("data.root=%r: folders %s beside train/ are ignored.", uri, others)
        return "splits", {s: found[s] for s in SPLITS if s in found}
    if found and not others:
        raise FileNotFoundError(f"data.root={uri!r} has {sorted(f + '/' for f in found.values())} but no train/ "
                                f"folder. {EXPECTED_LAYOUT}.")
    return "classes", {"train": None}


def group_images(keys: list[tuple[str, ...]], parents: dict[str, str | None], base: PurePosixPath,
                 findings: Findings) -> dict[str, dict[str, list[PurePosixPath]]]:
    """split -> class -> its image paths, in `os.walk` order; what is left out is counted in `findings`."""
    folders: dict[str, dict[str, list[PurePosixPath]]] = {split: {} for split in parents}
    for parts in sorted(keys, key=walk_order):
        for split, top in parents.items():
            inner = parts if top is None else (parts[1:] if parts[0] == top else None)
            if inner:
                break
        else:
            continue
        if any(is_ignored(part) for part in inner):
            findings.ignored["hidden or junk file"] += 1
        elif not is_image_file(inner[-1]):
            findings.ignored[f"not an image ({PurePosixPath(inner[-1]).suffix.lower() or 'no extension'})"] += 1
        elif len(inner) == 1:
            findings.ignored["image outside any class folder"] += 1
        else:
            folders[split].setdefault(class_name(inner[0]), []).append(base.joinpath(*parts))
    return folders


@dataclass(frozen=True)
class RemoteScan(FolderScan):
    """A `FolderScan` of an object store: paths are `bucket/prefix/...`, `uri` the `data.root` given."""

    uri: str = ""

    def to_json(self) -> dict[str, Any]:
        record = super().to_json()
        record["root"] = self.uri
        return record


def scan_remote_folder(store: ObjectStore, val_fraction: float = 0.1, test_fraction: float = 0.0,
                       seed: int = 0, fold: int | None = None, num_folds: int | None = None,
                       **unsupported: Any) -> RemoteScan:
    """List `store`'s folder into checked, complete splits (the rules of `folders.scan_image_folder`)."""
    for key, value in unsupported.items():
        if value:
            raise ValueError(f"data.{key}={value!r} is not supported with data.root={store.uri!r} (an object "
                             f"store); drop data.{key}, or copy the images to a local folder.")
    check_store(store)
    keys = [tuple(key.split("/")) for key in store.list_files()]
    layout, parents = choose_layout(keys, store.uri)
    findings = Findings()
    base = PurePosixPath(store.path)
    folders = group_images(keys, parents, base, findings)
    check_split_classes(store.uri, folders)
    classes = tuple(sorted(name for name, paths in folders["train"].items() if paths))
    if not classes:
        raise FileNotFoundError(f"data.root={store.uri!r} has no class folders with images. {EXPECTED_LAYOUT}.")
    if findings.ignored:
        log.info("Listing %s skipped: %s", store.uri, dict(sorted(findings.ignored.items())))
    splits = make_splits(label_items(folders, classes), classes, val_fraction, test_fraction, seed, num_folds, fold)
    counts = class_counts(splits, len(classes))
    notes = check_classes(classes, counts)
    return RemoteScan(base, layout, classes, splits, counts, (), tuple(notes), uri=store.uri)
