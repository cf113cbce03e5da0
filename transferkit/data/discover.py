"""Find the images of a folder (or a CSV manifest): class names and per-split ``(path, label)`` lists.

Scanning only reads: nothing is ever written into ``data.root``.
"""

from __future__ import annotations

import csv
import logging
import os
import unicodedata
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from transferkit.data.decode import IMAGE_EXTENSIONS

log = logging.getLogger(__name__)

SPLIT_ALIASES: dict[str, str] = {
    "train": "train",
    "val": "val",
    "valid": "val",
    "validation": "val",
    "test": "test",
}
SPLITS: tuple[str, ...] = ("train", "val", "test")
JUNK_NAMES: frozenset[str] = frozenset(
    {"__MACOSX", "Thumbs.db", "desktop.ini", "__pycache__", "$RECYCLE.BIN", "lost+found"}
)
EXPECTED_LAYOUT = (
    "Expected <root>/<class>/<image> or <root>/train/<class>/<image> "
    "(+ optional val/ and test/ with the same class folders)"
)

Item = tuple[Path, int]


@dataclass(frozen=True)
class ImageListing:
    """What discovery found: class names (their index is the label) and the items of each split."""

    root: Path
    layout: Literal["classes", "splits", "manifest"]
    classes: tuple[str, ...]
    splits: dict[str, list[Item]]
    empty_folders: tuple[str, ...] = ()
    ignored: dict[str, int] = field(default_factory=dict)


def class_name(folder_name: str) -> str:
    """The class name for a folder: exactly its name, Unicode-normalised (NFC)."""
    return unicodedata.normalize("NFC", folder_name)


def is_ignored(name: str) -> bool:
    """Hidden entries (``.DS_Store``, ``._x.jpg``, ``.ipynb_checkpoints``) and known junk."""
    return name.startswith(".") or name in JUNK_NAMES


def is_image_file(name: str) -> bool:
    return Path(name).suffix.lower() in IMAGE_EXTENSIONS


def walk_images(folder: Path, ignored: Counter[str]) -> tuple[list[Path], int]:
    """All image files under ``folder``, following symlinks without looping.

    Returns:
        The sorted image paths and how many of them sit in nested sub-folders.
    """
    images: list[Path] = []
    nested = 0
    seen: set[tuple[int, int]] = set()
    for current, dirnames, filenames in os.walk(folder, followlinks=True):
        stat = os.stat(current)
        if (stat.st_dev, stat.st_ino) in seen:
            ignored["symlink loop"] += 1
            dirnames.clear()
            continue
        seen.add((stat.st_dev, stat.st_ino))
        dirnames[:] = sorted(d for d in dirnames if not is_ignored(d))
        for name in sorted(filenames):
            path = Path(current, name)
            if is_ignored(name):
                ignored["hidden or junk file"] += 1
            elif not is_image_file(name):
                ignored[f"not an image ({path.suffix.lower() or 'no extension'})"] += 1
            elif not path.exists():
                ignored["broken symlink"] += 1
            else:
                images.append(path)
                nested += Path(current) != folder
    return images, nested


def scan_class_folders(parent: Path, ignored: Counter[str]) -> dict[str, list[Path]]:
    """Map each class folder directly under ``parent`` to its images (nested files included)."""
    classes: dict[str, list[Path]] = {}
    for entry in sorted(parent.iterdir()):
        if is_ignored(entry.name) or not entry.is_dir():
            if entry.is_file() and is_image_file(entry.name) and not is_ignored(entry.name):
                ignored["image outside any class folder"] += 1
            continue
        name = class_name(entry.name)
        images, nested = walk_images(entry, ignored)
        if nested:
            log.info(
                "%d images in nested sub-folders of %s count as class %r.", nested, entry, name
            )
        if name in classes:
            log.warning("Folders %s and another spell the same class %r; merged.", entry, name)
        classes.setdefault(name, []).extend(images)
    return classes


def find_split_folders(root: Path) -> dict[str, Path]:
    """Map ``train``/``val``/``test`` to their folders under ``root`` (``valid``/``validation`` → ``val``)."""
    found: dict[str, Path] = {}
    for entry in sorted(root.iterdir()):
        split = SPLIT_ALIASES.get(entry.name.lower())
        if split is None or not entry.is_dir():
            continue
        if split in found:
            raise ValueError(
                f"data.root={str(root)!r} has both {found[split].name}/ and {entry.name}/; "
                f"keep one {split} folder."
            )
        found[split] = entry
    return found


def check_root(root: Path) -> None:
    """One-line errors for a missing root or a file given as root."""
    if not root.exists():
        raise FileNotFoundError(f"data.root={str(root)!r} does not exist. {EXPECTED_LAYOUT}.")
    if not root.is_dir():
        raise NotADirectoryError(
            f"data.root={str(root)!r} is a file, not a folder. {EXPECTED_LAYOUT}."
        )


def label_items(
    folders: dict[str, dict[str, list[Path]]], classes: tuple[str, ...]
) -> dict[str, list[Item]]:
    index = {name: label for label, name in enumerate(classes)}
    return {
        split: [(path, index[name]) for name in sorted(by_class) for path in by_class[name]]
        for split, by_class in folders.items()
    }


def check_split_classes(root: Path, folders: dict[str, dict[str, list[Path]]]) -> None:
    """Classes in val/test must exist in train: the model could never predict them."""
    train = {name for name, paths in folders["train"].items() if paths}
    for split, by_class in folders.items():
        unknown = sorted(name for name, paths in by_class.items() if paths and name not in train)
        if unknown:
            raise ValueError(
                f"data.root={str(root)!r}: {split}/ has classes {unknown} that train/ lacks. "
                f"Add images to train/<class> for them, or remove those {split}/ folders."
            )


def non_split_folders(root: Path) -> list[str]:
    """Visible folders under ``root`` that are not train/val/test (or their aliases)."""
    return sorted(
        e.name
        for e in root.iterdir()
        if e.is_dir() and not is_ignored(e.name) and e.name.lower() not in SPLIT_ALIASES
    )


def scan_folders(root: Path, ignored: Counter[str]) -> tuple[str, dict[str, dict[str, list[Path]]]]:
    """Choose the layout (``splits`` when train/ exists, else ``classes``) and scan its class folders."""
    split_folders = find_split_folders(root)
    others = non_split_folders(root)
    if "train" in split_folders:
        if others:
            log.warning("data.root=%r: folders %s beside train/ are ignored.", str(root), others)
        folders = {s: scan_class_folders(split_folders[s], ignored) for s in SPLITS if s in split_folders}
        return "splits", folders
    if split_folders and not others:
        names = sorted(f"{p.name}/" for p in split_folders.values())
        raise FileNotFoundError(
            f"data.root={str(root)!r} has {names} but no train/ folder. {EXPECTED_LAYOUT}."
        )
    return "classes", {"train": scan_class_folders(root, ignored)}


def no_class_error(root: Path, ignored: Counter[str]) -> FileNotFoundError:
    if ignored["image outside any class folder"]:
        return FileNotFoundError(
            f"data.root={str(root)!r} has images but no class folders. {EXPECTED_LAYOUT}; "
            f"move each image into a folder named after its class."
        )
    return FileNotFoundError(
        f"data.root={str(root)!r} has no class folders with images "
        f"({', '.join(sorted(IMAGE_EXTENSIONS))}). {EXPECTED_LAYOUT}."
    )


def discover_images(root: Path | str, manifest: Path | str | None = None) -> ImageListing:
    """List ``root`` (or a ``path,label[,split]`` CSV manifest) into classes and split items."""
    root = Path(root).expanduser()
    check_root(root)
    if manifest is not None:
        return scan_manifest(Path(manifest).expanduser(), root)
    ignored: Counter[str] = Counter()
    layout, folders = scan_folders(root, ignored)
    check_split_classes(root, folders)
    classes = tuple(sorted(name for name, paths in folders["train"].items() if paths))
    if not classes:
        raise no_class_error(root, ignored)
    empty = tuple(
        f"{split}/{name}" if layout == "splits" else name
        for split, by_class in folders.items()
        for name, paths in sorted(by_class.items())
        if not paths
    )
    if ignored:
        log.info("Scanning %s skipped: %s", root, dict(sorted(ignored.items())))
    return ImageListing(root, layout, classes, label_items(folders, classes), empty, dict(ignored))


def scan_manifest(manifest: Path, root: Path) -> ImageListing:
    """Read a CSV with columns ``path,label`` (+ optional ``split``); paths are relative to ``root``."""
    if not manifest.is_file():
        raise FileNotFoundError(f"data.manifest={str(manifest)!r} does not exist.")
    folders: dict[str, dict[str, list[Path]]] = {"train": {}}
    with manifest.open(newline="", encoding="utf-8-sig") as handle:
        reader = csv.DictReader(handle)
        missing = {"path", "label"} - set(reader.fieldnames or ())
        if missing:
            raise ValueError(
                f"data.manifest={str(manifest)!r} lacks columns {sorted(missing)}; its header "
                f"must be path,label (optionally ,split), got {reader.fieldnames!r}."
            )
        for line, row in enumerate(reader, start=2):
            split = SPLIT_ALIASES.get((row.get("split") or "train").strip().lower())
            if split is None:
                raise ValueError(
                    f"data.manifest={str(manifest)!r} line {line}: split={row['split']!r} "
                    f"is unknown; use one of {sorted(SPLIT_ALIASES)}."
                )
            name = class_name(row["label"].strip())
            folders.setdefault(split, {}).setdefault(name, []).append(root / row["path"].strip())
    check_split_classes(root, folders)
    classes = tuple(sorted(folders["train"]))
    if not classes:
        raise ValueError(f"data.manifest={str(manifest)!r} has no train rows.")
    ordered = {split: folders[split] for split in SPLITS if split in folders}
    return ImageListing(root, "manifest", classes, label_items(ordered, classes))
