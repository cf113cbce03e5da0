"""Files that change under a run: an image deleted, replaced or damaged after the scan is skipped, recorded
like a bad file found at scan time, and never stops an epoch half-way.

`FileSource` records such a file in its `SkipLog` (a small file every DataLoader worker appends to, so the
main process can read what its workers skipped) and raises `SkippedImage`; `TransformedDataset` answers
with an `Unreadable` marker that carries a readable neighbour as a stand-in; `collate_readable` drops the
markers from the batch, and uses the stand-ins only when nothing of a batch is left. Once the files
skipped (at scan time and since) pass `data.max_bad_fraction` of all, the run stops as a scan would.
"""

from __future__ import annotations

import logging
import os
import tempfile
import uuid
import weakref
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

from torch.utils.data import default_collate

from transferkit.data.decode import UnreadableImageError

log = logging.getLogger(__name__)

NEIGHBOURS_TRIED = 16  # readable stand-ins looked for after an unreadable item


class SkippedImage(UnreadableImageError):
    """An image that was readable at scan time and is not any more; recorded in the run's `SkipLog`."""


class TooManyUnreadableError(ValueError):
    """More files became unreadable during the run than `data.max_bad_fraction` allows."""


class Unreadable(NamedTuple):
    """What a dataset yields for a file that could not be read mid-run: its path, and a readable stand-in
    sample used only if a whole batch is unreadable."""

    path: str
    stand_in: Any


@dataclass(frozen=True)
class SkipLog:
    """Where the files skipped mid-run are written, one `path<TAB>reason` line each (appends of one short
    line are atomic, so DataLoader workers and the main process may all write), and how many may be."""

    path: Path
    allowed: int  # data.max_bad_fraction of all files scanned, less those skipped at scan time
    max_bad_fraction: float
    total: int

    @classmethod
    def create(cls, max_bad_fraction: float, total: int, skipped_at_scan: int) -> SkipLog:
        """A log in the temporary folder (the file appears with the first skip), removed when the returned
        object is collected."""
        name = Path(tempfile.gettempdir()) / f"transferkit-skipped-{os.getpid()}-{uuid.uuid4().hex}.tsv"
        log_ = cls(name, int(max_bad_fraction * total) - skipped_at_scan, max_bad_fraction, total)
        weakref.finalize(log_, name.unlink, missing_ok=True)
        return log_

    def record(self, path: Path | str, reason: str) -> None:
        """Write down `path`; raise `TooManyUnreadableError` once more files are skipped than allowed."""
        line = f"{path}\t{' '.join(reason.split())}\n".encode()
        handle = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0), 0o600)
        try:
            os.write(handle, line)
        finally:
            os.close(handle)
        log.warning("Skipping %s: it became unreadable during the run (%s); recorded with the files skipped "
                    "at scan time.", path, reason)
        count = len(self.entries())
        if count > self.allowed:
            raise TooManyUnreadableError(
                f"{count} images became unreadable during the run (the latest: {path}), more than "
                f"data.max_bad_fraction={self.max_bad_fraction} of {self.total} allows with those skipped at "
                "scan time; the data folder is changing under the run. Restore the files, or raise "
                "data.max_bad_fraction, and resume.")

    def entries(self) -> list[tuple[Path, str]]:
        """The files skipped so far, each once, in the order first seen (every process's)."""
        if not self.path.is_file():
            return []
        seen: dict[str, str] = {}
        for line in self.path.read_text(encoding="utf-8").splitlines():
            name, _, reason = line.partition("\t")
            seen.setdefault(name, reason)
        return [(Path(name), reason) for name, reason in seen.items()]


def skipped_mid_run(datamodule) -> list[tuple[Path, str]]:
    """The files a datamodule's loaders skipped since its scan (empty when it has no skip log)."""
    skips = getattr(datamodule, "skip_log", None)
    return skips.entries() if skips is not None else []


def readable_stand_in(dataset, index: int) -> Any:
    """The first readable sample after `index` (wrapping): what fills a batch whose files are all gone."""
    for step in range(1, min(NEIGHBOURS_TRIED, len(dataset)) + 1):
        try:
            return dataset.load((index + step) % len(dataset))
        except SkippedImage:
            continue
    raise TooManyUnreadableError(f"{NEIGHBOURS_TRIED} images in a row became unreadable during the run; the data "
                                 "folder is changing under the run (a sync client, a mount gone?).")


class SkipsUnreadable:
    """`__getitem__` for a dataset whose `load(index)` may raise `SkippedImage` (a file gone mid-run): a
    readable neighbour instead, or with `drop_unreadable` (a loader collating with `collate_readable`)
    an `Unreadable` marker that the batch drops."""

    drop_unreadable: bool = False

    def load(self, index: int) -> Any:
        raise NotImplementedError

    def __getitem__(self, index: int):
        try:
            return self.load(index)
        except SkippedImage as err:
            stand_in = readable_stand_in(self, index)
            return Unreadable(str(err.path), stand_in) if self.drop_unreadable else stand_in


def collate_readable(batch: list) -> Any:
    """`default_collate` of the readable samples of `batch`; the stand-ins if none is left."""
    readable = [sample for sample in batch if not isinstance(sample, Unreadable)]
    return default_collate(readable or [sample.stand_in for sample in batch])
