"""Scan an image folder into checked, complete splits: discover, validate, split, summarise.

Every problem is found here, before the first batch; nothing is written into ``data.root``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from transferkit.data.curation import apply_curation, check_known, read_curation
from transferkit.data.discover import Item, discover_images
from transferkit.data.fingerprints import Fingerprints, cross_split_duplicates, inspect_files, leak_notes
from transferkit.data.splits import make_splits, relative_path, splits_record
from transferkit.data.validate import (
    BadFile,
    check_classes,
    check_multilabel_classes,
    class_counts,
    drop_unreadable,
    summary_table,
)

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class FolderScan:
    """Class names (index = label), the final splits, and what the checks found."""

    root: Path
    layout: str
    class_names: tuple[str, ...]
    splits: dict[str, list[Item]]
    counts: dict[str, list[int]]
    skipped: tuple[BadFile, ...] = ()
    warnings: tuple[str, ...] = ()
    fingerprints: Fingerprints | None = field(default=None, repr=False)  # of every readable file (audit)
    curation: dict = field(default_factory=dict)  # what data.exclude / data.relabel changed
    kind: str = "classification"  # multilabel: each label is the image's label set as a bitmask

    def summary_table(self) -> str:
        """Class → image count per split, as plain text."""
        return summary_table(self.class_names, self.counts)

    def to_json(self) -> dict[str, Any]:
        """Split membership (for ``splits.json``) plus counts, skipped files and warnings."""
        record = splits_record(self.root, self.class_names, self.splits)
        record["counts"] = {
            split: dict(zip(self.class_names, counts)) for split, counts in self.counts.items()
        }
        record["skipped"] = [{"path": str(path), "reason": reason} for path, reason in self.skipped]
        record["warnings"] = list(self.warnings)
        if self.kind == "multilabel":
            record["kind"] = self.kind
        record.update(self.curation)
        if self.fingerprints is not None:  # what `fit resume= data.root=<new place>` checks the files by
            used = [path for items in self.splits.values() for path, _ in items]
            record["digests"] = {relative_path(path, self.root): self.fingerprints.digest(path).hex()
                                 for path in sorted(used) if self.fingerprints.digest(path) is not None}
        return record


def scan_image_folder(
    root: Path | str,
    val_fraction: float = 0.1,
    test_fraction: float = 0.0,
    seed: int = 0,
    max_bad_fraction: float = 0.05,
    manifest: Path | str | None = None,
    fold: int | None = None,
    num_folds: int | None = None,
    num_workers: int = 0,
    exclude: str | None = None,
    relabel: str | None = None,
) -> FolderScan:
    """Find the images, drop unreadable ones (or stop), complete the splits and check them.

    Args:
        root: ``<root>/<class>/…`` or ``<root>/{train,val,test}/<class>/…``; manifest paths are relative to it.
        val_fraction, test_fraction: stratified share carved from train for splits that have no folder.
        max_bad_fraction: above this share of unreadable files the scan stops and lists them all.
        fold, num_folds: stratified k-fold over train+val; fold ``fold`` becomes val.
        num_workers: threads that decode files to check them.
        exclude, relabel: ``data.exclude`` / ``data.relabel`` CSV files (see ``transferkit.data.curation``).

    Raises:
        FileNotFoundError, NotADirectoryError, ValueError: with the config key and what to do.
    """
    listing = discover_images(root, manifest=manifest)
    classes, multilabel = listing.classes, listing.kind == "multilabel"
    if multilabel and relabel:
        raise ValueError(f"data.relabel={relabel!r} sets one class per file; a multi-label manifest holds label "
                         "sets: edit the manifest's rows instead, or drop data.relabel.")
    curation = read_curation(listing.root, exclude, relabel, classes)
    check_known(curation, listing.root, listing.splits)
    paths = [path for items in listing.splits.values() for path, _ in items
             if relative_path(path, listing.root) not in curation.excluded]
    bad, prints = inspect_files(paths, num_workers=num_workers)  # one decode: the check and the fingerprints
    readable = drop_unreadable(listing.splits, bad, max_bad_fraction)
    splits = make_splits(readable, classes, val_fraction, test_fraction, seed, num_folds, fold, multilabel)
    splits, record = apply_curation(splits, listing.root, classes, curation)
    counts = class_counts(splits, len(classes), multilabel)
    notes = list(listing.notes) + (check_multilabel_classes(classes, counts) if multilabel
                                   else check_classes(classes, counts, listing.empty_folders))
    notes += leak_notes(cross_split_duplicates(splits, prints), listing.root)
    scan = FolderScan(listing.root, listing.layout, classes, splits, counts, tuple(bad), tuple(notes), prints,
                      record, listing.kind)
    log.debug("Data in %s (%s layout):\n%s", scan.root, scan.layout, scan.summary_table())
    return scan
