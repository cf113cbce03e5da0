"""Walk a folder for image files: junk skipped, symlinks followed only where they lead somewhere new.

A link back into a folder that is scanned anyway (``cat/loop -> ..``, ``train/kitty -> cat``) would
count other folders' images a second time, under this folder's class; such links are skipped and
named, and so are dangling ones.
"""

from __future__ import annotations

import logging
import os
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from transferkit.data.decode import IMAGE_EXTENSIONS

log = logging.getLogger(__name__)

JUNK_NAMES: frozenset[str] = frozenset(
    {"__MACOSX", "Thumbs.db", "desktop.ini", "__pycache__", "$RECYCLE.BIN", "lost+found"}
)
BROKEN_LINK = "broken symlink"
SCANNED_LINK = "symlink to a folder already scanned"
LOOP_LINK = "symlink loop"
LINK_NOTES: dict[str, tuple[str, str]] = {  # reason -> (what was skipped, why and what to do)
    SCANNED_LINK: ("symlink(s) into folders scanned anyway", "following them would label those "
                   "images a second time, as this folder's class; remove the links"),
    BROKEN_LINK: ("broken symlink(s)", "their targets are missing; restore them or remove the links"),
    LOOP_LINK: ("symlink loop(s)", "they lead in a circle; remove the links"),
}
SHOWN_PATHS = 10


@dataclass
class Findings:
    """What a scan left out (a count per reason, and which links) and what it wants said."""

    ignored: Counter[str] = field(default_factory=Counter)
    links: dict[str, list[Path]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def skip_link(self, reason: str, link: Path) -> None:
        self.ignored[reason] += 1
        self.links.setdefault(reason, []).append(link)

    def link_notes(self, root: Path) -> list[str]:
        """One warning per kind of skipped link, naming the links (relative to ``root``)."""
        return [
            f"Skipped {len(paths)} {LINK_NOTES[reason][0]} in {str(root)!r}: {shown_paths(paths, root)}; "
            f"{LINK_NOTES[reason][1]}."
            for reason, paths in sorted(self.links.items())
        ]


def shown_paths(paths: Sequence[Path], root: Path) -> str:
    """The first paths, relative to ``root`` where they lie under it, then how many more."""
    def relative(path: Path) -> str:
        return str(path.relative_to(root)) if path.is_relative_to(root) else str(path)

    shown = ", ".join(repr(relative(p)) for p in paths[:SHOWN_PATHS])
    return shown + (f" and {len(paths) - SHOWN_PATHS} more" if len(paths) > SHOWN_PATHS else "")


def is_ignored(name: str) -> bool:
    """Hidden entries (``.DS_Store``, ``._x.jpg``, ``.ipynb_checkpoints``) and known junk."""
    return name.startswith(".") or name in JUNK_NAMES


def is_image_file(name: str) -> bool:
    return Path(name).suffix.lower() in IMAGE_EXTENSIONS


def overlaps(a: Path, b: Path) -> bool:
    """Whether one of two resolved folders holds (or is) the other."""
    return a.is_relative_to(b) or b.is_relative_to(a)


def leads_somewhere_new(path: Path, scanned: Sequence[Path]) -> bool:
    """False for a link to a folder that holds or lies inside a ``scanned`` folder (resolved paths)."""
    if not path.is_symlink():
        return True
    target = path.resolve()
    return not any(overlaps(target, folder) for folder in scanned)


def walk_images(
    folder: Path, findings: Findings, scanned: Sequence[Path] | None = None
) -> tuple[list[Path], int]:
    """All image files under ``folder``, following symlinks that lead somewhere new.

    Args:
        scanned: resolved folders whose images are collected anyway (default: ``folder``); a linked
            folder that overlaps one of them (``folder/loop -> ..``) is skipped and recorded.

    Returns:
        The sorted image paths and how many of them sit in nested sub-folders.
    """
    scanned = [folder.resolve()] if scanned is None else list(scanned)
    images: list[Path] = []
    nested = 0
    seen: set[tuple[int, int]] = set()
    for current, dirnames, filenames in os.walk(folder, followlinks=True):
        stat = os.stat(current)
        if (stat.st_dev, stat.st_ino) in seen:  # a loop outside every scanned folder
            findings.skip_link(LOOP_LINK, Path(current))
            dirnames.clear()
            continue
        seen.add((stat.st_dev, stat.st_ino))
        kept, here = [], Path(current).resolve()  # a link to an ancestor of `here` leads back too
        for name in sorted(d for d in dirnames if not is_ignored(d)):
            if leads_somewhere_new(Path(current, name), [*scanned, here]):
                kept.append(name)
            else:
                findings.skip_link(SCANNED_LINK, Path(current, name))
        dirnames[:] = kept
        for name in sorted(filenames):
            path = Path(current, name)
            if is_ignored(name):
                findings.ignored["hidden or junk file"] += 1
            elif not path.exists():  # os.walk lists a dangling link as a file, whatever its name
                findings.skip_link(BROKEN_LINK, path)
            elif not is_image_file(name):
                findings.ignored[f"not an image ({path.suffix.lower() or 'no extension'})"] += 1
            else:
                images.append(path)
                nested += Path(current) != folder
    return images, nested
