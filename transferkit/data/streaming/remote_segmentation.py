"""Scan a segmentation folder in an object store into splits by the local folder's rules, listing objects only.

Images and masks are paired by stem, and split, exactly as `segmentation_scan.scan_segmentation_folder` does on
local disk, so the same objects give the same splits. Nothing is read here: a mask whose size differs from its
image's is found when the pair is first read (the local scan reads every header up front).
"""

from __future__ import annotations

from pathlib import PurePosixPath

from transferkit.data.segmentation_scan import index_images, match_pairs, split_layout
from transferkit.data.streaming.store import ObjectStore, check_store


def folder_files(store: ObjectStore) -> dict[str, list[PurePosixPath]]:
    """`sub-folder (relative, "" for the root) -> its files` (full `bucket/prefix/...` paths, sorted)."""
    base = PurePosixPath(store.path)
    folders: dict[str, list[PurePosixPath]] = {}
    for key in store.list_files():
        relative = PurePosixPath(key)
        folders.setdefault(str(relative.parent), []).append(base / relative)
    return {folder: sorted(paths) for folder, paths in folders.items()}


def scan_remote_segmentation(store: ObjectStore, val_fraction: float = 0.15, test_fraction: float = 0.15,
                             seed: int = 0) -> dict[str, list[tuple[PurePosixPath, PurePosixPath]]]:
    """Pair and split `store`'s images and masks (the rules of `scan_segmentation_folder`)."""
    check_store(store)
    folders = folder_files(store)
    present = {PurePosixPath(folder) for folder in folders}
    present |= {parent for folder in list(present) for parent in folder.parents}  # a folder exists by its objects

    def inside(sub: str, name: str) -> str:
        return str(PurePosixPath(sub, name))

    def pair(sub: str) -> list[tuple[PurePosixPath, PurePosixPath]]:
        images = index_images(folders.get(inside(sub, "images"), []))
        masks = index_images(folders.get(inside(sub, "masks"), []))
        return match_pairs(images, masks, store.uri.rstrip("/") + (f"/{sub}" if sub else ""))

    return split_layout(lambda sub: PurePosixPath(sub, "images") in present, pair, val_fraction, test_fraction, seed,
                        store.uri)
