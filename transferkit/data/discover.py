"""Find the images of a folder (or a CSV manifest): class names and per-split ``(path, label)`` lists.

Scanning only reads: nothing is ever written into ``data.root``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from transferkit.data.decode import IMAGE_EXTENSIONS
from transferkit.data.manifest import SPLIT_ALIASES, class_name, read_rows
from transferkit.data.multilabel import MAX_CLASSES, label_mask
from transferkit.data.walk import SCANNED_LINK, Findings, is_ignored, is_image_file, overlaps, walk_images

log = logging.getLogger(__name__)

SPLITS: tuple[str, ...] = ("train", "val", "test")
EXPECTED_LAYOUT = (
    "Expected <root>/<class>/<image> or <root>/train/<class>/<image> "
    "(+ optional val/ and test/ with the same class folders)"
)

Item = tuple[Path, int]


@dataclass(frozen=True)
class ImageListing:
    """What discovery found: class names (their index is the label) and the items of each split.

    ``ignored`` counts what was left out per reason; ``notes`` are warnings that name the links
    skipped and the class folders whose names collide.
    """

    root: Path
    layout: Literal["classes", "splits", "manifest"]
    classes: tuple[str, ...]
    splits: dict[str, list[Item]]
    empty_folders: tuple[str, ...] = ()
    ignored: dict[str, int] = field(default_factory=dict)
    notes: tuple[str, ...] = ()
    kind: Literal["classification", "multilabel"] = "classification"  # multilabel: each label is a bitmask


def spelled(name: str) -> str:
    """``name`` quoted, with its code points shown when they are not plain ASCII (NFC vs NFD)."""
    return repr(name) if name.isascii() else f"{name!r} ({ascii(name)})"


def class_folders(parent: Path, findings: Findings) -> list[Path]:
    """The visible folders directly under ``parent``; loose images there are counted."""
    folders = []
    for entry in sorted(parent.iterdir()):
        if is_ignored(entry.name) or not entry.is_dir():
            if entry.is_file() and is_image_file(entry.name) and not is_ignored(entry.name):
                findings.ignored["image outside any class folder"] += 1
            continue
        folders.append(entry)
    return folders


def distinct_folders(
    root: Path, folders: dict[str, list[Path]], findings: Findings
) -> dict[str, list[Path]]:
    """Drop class folders that lead (through a link) into another one, or above it.

    ``train/kitty -> cat``, ``val -> train`` or ``train/all -> ..`` would label images a second
    time; folders reached without a link win, then the first in split and name order.
    """
    base = root.resolve()

    def linked(folder: Path) -> bool:
        return folder.resolve() != base / folder.relative_to(root)

    order = sorted(((split, folder) for split, found in folders.items() for folder in found),
                   key=lambda item: (linked(item[1]), SPLITS.index(item[0])))
    kept: dict[Path, Path] = {}
    for _, folder in order:
        target = folder.resolve()
        if any(overlaps(target, other) for other in kept):
            findings.skip_link(SCANNED_LINK, folder)
        else:
            kept[target] = folder
    chosen = set(kept.values())
    return {split: [f for f in found if f in chosen] for split, found in folders.items()}


def name_collisions(parent: Path, folders: list[Path]) -> list[str]:
    """Warnings for class folders whose names are one after NFC normalisation, or after case-folding."""
    notes = []
    by_name: dict[str, list[str]] = {}
    for folder in folders:
        by_name.setdefault(class_name(folder.name), []).append(folder.name)
    for name, raw in sorted(by_name.items()):
        if len(raw) > 1:
            notes.append(f"Class folders {', '.join(map(spelled, raw))} in {str(parent)!r} spell the "
                         f"same class {name!r} after Unicode normalisation (NFC); their images were "
                         "merged into one class. Rename one if they are different classes.")
    by_fold: dict[str, list[str]] = {}
    for name in sorted(by_name):
        by_fold.setdefault(name.casefold(), []).append(name)
    for names in sorted(by_fold.values()):
        if len(names) > 1:
            notes.append(f"Class folders {', '.join(map(spelled, names))} in {str(parent)!r} differ "
                         f"only in letter case; they stay {len(names)} classes, but a case-insensitive "
                         "file system (macOS, Windows) would merge them. Rename them if they are one class.")
    return notes


def scan_class_folders(
    parent: Path, folders: list[Path], scanned: list[Path], findings: Findings
) -> dict[str, list[Path]]:
    """Map each class folder of ``parent`` to its images (nested files included)."""
    classes: dict[str, list[Path]] = {}
    findings.notes.extend(name_collisions(parent, folders))
    for entry in folders:
        name = class_name(entry.name)
        images, nested = walk_images(entry, findings, scanned)
        if nested:
            log.info(
                "%d images in nested sub-folders of %s count as class %r.", nested, entry, name
            )
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


SEGMENTATION_LAYOUT = "Expected <root>/images/ + <root>/masks/, or <root>/{train,val,test}/{images,masks}/"


def check_root(root: Path, task: str = "classification") -> None:
    """One-line errors for a missing root or a file given as root (naming the `task`'s folder layout)."""
    layout = SEGMENTATION_LAYOUT if task == "segmentation" else EXPECTED_LAYOUT
    if not root.exists():
        raise FileNotFoundError(f"data.root={str(root)!r} does not exist. {layout}.")
    if not root.is_dir():
        raise NotADirectoryError(f"data.root={str(root)!r} is a file, not a folder. {layout}.")


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


def layout_folders(root: Path) -> tuple[str, dict[str, Path]]:
    """Choose the layout (``splits`` when train/ exists, else ``classes``): split name -> its folder."""
    split_folders = find_split_folders(root)
    others = non_split_folders(root)
    if "train" in split_folders:
        if others:
            log.warning("data.root=%r: folders %s beside train/ are ignored.", str(root), others)
        return "splits", {s: split_folders[s] for s in SPLITS if s in split_folders}
    if split_folders and not others:
        names = sorted(f"{p.name}/" for p in split_folders.values())
        raise FileNotFoundError(
            f"data.root={str(root)!r} has {names} but no train/ folder. {EXPECTED_LAYOUT}."
        )
    return "classes", {"train": root}


def scan_folders(root: Path, findings: Findings) -> tuple[str, dict[str, dict[str, list[Path]]]]:
    """Find the layout and each split's class folders, then their images (each folder once)."""
    layout, parents = layout_folders(root)
    found = {split: class_folders(parent, findings) for split, parent in parents.items()}
    found = distinct_folders(root, found, findings)
    scanned = [folder.resolve() for folders in found.values() for folder in folders]
    return layout, {split: scan_class_folders(parents[split], found[split], scanned, findings)
                    for split in parents}


def no_class_error(root: Path, findings: Findings) -> FileNotFoundError:
    if findings.ignored["image outside any class folder"]:
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
    findings = Findings()
    layout, folders = scan_folders(root, findings)
    check_split_classes(root, folders)
    classes = tuple(sorted(name for name, paths in folders["train"].items() if paths))
    if not classes:
        raise no_class_error(root, findings)
    empty = tuple(
        f"{split}/{name}" if layout == "splits" else name
        for split, by_class in folders.items()
        for name, paths in sorted(by_class.items())
        if not paths
    )
    ignored = dict(sorted(findings.ignored.items()))
    if ignored:
        log.info("Scanning %s skipped: %s", root, ignored)
    notes = tuple(findings.link_notes(root) + findings.notes)
    return ImageListing(root, layout, classes, label_items(folders, classes), empty, ignored, notes)


def scan_manifest(manifest: Path, root: Path) -> ImageListing:
    """Read a CSV manifest (`transferkit.data.manifest`: `path,label`, `path,labels` or one-hot, + optional
    `split`); paths are relative to ``root``. Its rows are checked first: each problem names its CSV lines.
    A multi-label manifest gives ``kind="multilabel"`` items whose label is the set's bitmask."""
    rows, form, columns = read_rows(manifest, root)
    if not any(row.split == "train" for row in rows):
        raise ValueError(f"data.manifest={str(manifest)!r} has no train rows.")
    if form == "label":
        folders: dict[str, dict[str, list[Path]]] = {"train": {}}
        for row in rows:
            folders.setdefault(row.split, {}).setdefault(row.labels[0], []).append(row.path)
        classes = tuple(sorted(folders["train"]))
        ordered = {split: folders[split] for split in SPLITS if split in folders}
        return ImageListing(root, "manifest", classes, label_items(ordered, classes))
    classes = tuple(sorted(columns or {label for row in rows if row.split == "train" for label in row.labels}))
    if len(classes) > MAX_CLASSES:
        raise ValueError(f"data.manifest={str(manifest)!r} names {len(classes)} classes; multi-label runs take at "
                         f"most {MAX_CLASSES}. Merge or drop the rarest labels.")
    index = {name: c for c, name in enumerate(classes)}
    splits = {split: [(row.path, label_mask(row.labels, index)) for row in rows if row.split == split]
              for split in SPLITS if any(row.split == split for row in rows)}
    return ImageListing(root, "manifest", classes, splits, kind="multilabel")
