"""Segmentation folders: image/mask pairs matched by file stem, checked, and split (a local folder here; an
object store lists into the same rules in `data/streaming/remote_segmentation.py`).

Layouts under ``data.root``: ``<root>/images/*`` + ``<root>/masks/*`` (split with ``data.val_fraction`` /
``data.test_fraction`` from ``seed``), or ``<root>/{train,val,test}/{images,masks}/*`` (``test`` optional).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path, PurePath
from typing import TypeVar

import numpy as np
from PIL import Image

from transferkit.data.decode import IMAGE_EXTENSIONS, displayed_size

log = logging.getLogger(__name__)

Pair = tuple[Path, Path]
P = TypeVar("P", bound=PurePath)  # a local Path, or an object store's PurePosixPath
SPLITS = ("train", "val", "test")


def index_images(files: Iterable[P]) -> dict[str, P]:
    """``stem -> path`` for the image files among ``files`` (sorted, directly in one folder); two per stem raise."""
    found: dict[str, P] = {}
    for path in files:
        if path.suffix.lower() in IMAGE_EXTENSIONS and not path.name.startswith("."):
            if path.stem in found:
                raise ValueError(
                    f"{str(found[path.stem])!r} and {str(path)!r} share the stem {path.stem!r}; "
                    "images and masks are matched by stem, so rename or remove one."
                )
            found[path.stem] = path
    return found


def list_images(folder: Path) -> dict[str, Path]:
    """``stem -> path`` for the image files directly in ``folder``; two files per stem raise."""
    return index_images(path for path in sorted(folder.iterdir()) if path.is_file())


def match_pairs(images: dict[str, P], masks: dict[str, P], folder: str) -> list[tuple[P, P]]:
    """Pair ``images`` with ``masks`` by stem (``folder``: where both are, as the messages name it); a missing
    mask raises naming it."""
    missing = [images[s] for s in images if s not in masks]
    if missing:
        raise FileNotFoundError(
            f"no mask for image {str(missing[0])!r} ({len(missing)} image(s) without one); expected "
            f"{folder + '/masks/' + missing[0].stem + '.png'!r}. Add the mask or remove the image."
        )
    orphans = sorted(set(masks) - set(images))
    if orphans:
        log.warning("%d mask(s) in %s/masks have no image and are ignored, e.g. %s",
                    len(orphans), folder, masks[orphans[0]].name)
    if not images:
        raise FileNotFoundError(f"{folder + '/images'!r} holds no images.")
    return [(images[s], masks[s]) for s in sorted(images)]


def pair_folder(folder: Path) -> list[Pair]:
    """Match ``folder/images/*`` with ``folder/masks/*`` by stem; a missing mask raises naming it."""
    return match_pairs(list_images(folder / "images"), list_images(folder / "masks"), str(folder))


def check_pair_sizes(pairs: Sequence[Pair]) -> None:
    """Raise naming both files when a mask's size differs from its image's.

    Sizes are as decoded (``decode.displayed_size``): EXIF orientation applied, so a phone photo
    stored 64x48 but displayed 48x64 pairs with a mask drawn on the displayed image.
    """
    for image_path, mask_path in pairs:
        with Image.open(image_path) as image, Image.open(mask_path) as mask:
            image_size, mask_size = displayed_size(image), displayed_size(mask)
            turned = " once its EXIF orientation is applied" if image_size != image.size else ""
            if image_size != mask_size:
                raise ValueError(
                    f"mask {str(mask_path)!r} is {mask_size[0]}x{mask_size[1]} but its image "
                    f"{str(image_path)!r} is {image_size[0]}x{image_size[1]}{turned} (width x height); "
                    "masks must have their image's size as displayed."
                )


def split_pairs(pairs: Sequence[Pair], val_fraction: float, test_fraction: float,
                seed: int) -> dict[str, list[Pair]]:
    """Seeded random train/val/test split; val and test get at least one pair when asked for."""
    for key, value in (("data.val_fraction", val_fraction), ("data.test_fraction", test_fraction)):
        if not 0.0 <= value < 1.0:
            raise ValueError(f"{key}={value!r} is out of range; use a fraction in [0, 1).")
    order = np.random.default_rng(seed).permutation(len(pairs))
    n_val = max(1, round(val_fraction * len(pairs))) if val_fraction else 0
    n_test = max(1, round(test_fraction * len(pairs))) if test_fraction else 0
    if n_val + n_test >= len(pairs):
        raise ValueError(
            f"{len(pairs)} images cannot give data.val_fraction={val_fraction!r} and "
            f"data.test_fraction={test_fraction!r} and still leave training images; add images."
        )
    chosen = {"val": order[:n_val], "test": order[n_val:n_val + n_test], "train": order[n_val + n_test:]}
    return {split: [pairs[i] for i in sorted(idx)] for split, idx in chosen.items()}


def split_layout(has_images: Callable[[str], bool], pair: Callable[[str], list], val_fraction: float,
                 test_fraction: float, seed: int, root: str) -> dict[str, list]:
    """The layout's splits: ``has_images(sub)`` says whether ``<root>/<sub>/images`` exists (``""``: the root
    itself), ``pair(sub)`` gives that folder's checked pairs. A local folder and an object store share it."""
    if has_images(""):
        return split_pairs(pair(""), val_fraction, test_fraction, seed)
    if has_images("train"):
        splits = {s: pair(s) for s in SPLITS if has_images(s)}
        if "val" not in splits:
            rest = split_pairs(splits["train"], val_fraction or 0.15, 0.0, seed)
            splits["train"], splits["val"] = rest["train"], rest["val"]
        return {s: splits.get(s, []) for s in SPLITS}
    raise FileNotFoundError(
        f"data.root={root!r} has neither images/ and masks/ nor train/images/ and train/masks/. "
        "Put images in <root>/images and masks with the same file stems in <root>/masks."
    )


def scan_segmentation_folder(root: Path | str, val_fraction: float = 0.15,
                             test_fraction: float = 0.15, seed: int = 0) -> dict[str, list[Pair]]:
    """Find image/mask pairs under ``root`` and split them (see the module docstring)."""
    root = Path(root).expanduser()
    if not root.is_dir():
        raise FileNotFoundError(f"data.root={str(root)!r} is not a folder.")

    def checked_pairs(sub: str) -> list[Pair]:
        pairs = pair_folder(root / sub)
        check_pair_sizes(pairs)
        return pairs

    return split_layout(lambda sub: (root / sub / "images").is_dir(), checked_pairs, val_fraction, test_fraction,
                        seed, str(root))
