"""Segmentation masks: decode to class ids (palette indices kept), validate, colour, write.

A mask is an ``H x W`` ``int64`` array of class ids; ``ignore_index`` (255 by default) marks pixels
that no loss or metric counts. Palette PNGs keep their *indices* (never converted through RGB or L),
8-bit and 16-bit grey PNGs keep their values, and colour (RGB) masks need ``data.mask_palette``.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from transferkit.data.decode import open_image

log = logging.getLogger(__name__)

Colour = tuple[int, int, int]
_ID_MODES = frozenset({"P", "L", "1", "I", "I;16", "I;16B", "I;16L", "I;16N"})


class MaskError(ValueError):
    """A mask file that cannot be used as it is; the message names the file and what to do."""


def voc_palette(num_colours: int = 256) -> list[Colour]:
    """The PASCAL VOC colour map: id 0 black, 1 dark red, 2 green, ... and 255 cream."""
    palette = []
    for index in range(num_colours):
        red = green = blue = 0
        value = index
        for shift in range(7, -1, -1):
            red |= ((value >> 0) & 1) << shift
            green |= ((value >> 1) & 1) << shift
            blue |= ((value >> 2) & 1) << shift
            value >>= 3
        palette.append((red, green, blue))
    return palette


def parse_colour(key: object) -> Colour:
    """``"#ff0000"``, ``"255,0,0"``, ``"255 0 0"`` or ``(255, 0, 0)`` -> ``(255, 0, 0)``."""
    if isinstance(key, str):
        text = key.strip()
        if text.startswith("#") and len(text) == 7:
            return tuple(int(text[i : i + 2], 16) for i in (1, 3, 5))  # type: ignore[return-value]
        parts = text.replace(",", " ").split()
    else:
        parts = list(key) if isinstance(key, Sequence) else []
    if len(parts) != 3:
        raise ValueError(
            f"data.mask_palette key {key!r} is not a colour; write '#rrggbb' or 'r,g,b' (0..255)."
        )
    try:
        colour = tuple(int(p) for p in parts)
    except ValueError:
        raise ValueError(
            f"data.mask_palette key {key!r} is not a colour; write '#rrggbb' or 'r,g,b' (0..255)."
        ) from None
    if not all(0 <= c <= 255 for c in colour):
        raise ValueError(f"data.mask_palette key {key!r} has a channel outside 0..255.")
    return colour  # type: ignore[return-value]


def parse_palette(palette: Mapping[object, int]) -> dict[Colour, int]:
    """Normalise ``data.mask_palette`` (colour -> class id) to ``{(r, g, b): id}``."""
    return {parse_colour(colour): int(class_id) for colour, class_id in palette.items()}


def colour_to_ids(rgb: np.ndarray, palette: Mapping[Colour, int], path: Path | str) -> np.ndarray:
    """Map every pixel colour of an ``H x W x 3`` mask to its class id; unmapped colours raise."""
    packed = (rgb[..., 0].astype(np.int64) << 16) | (rgb[..., 1].astype(np.int64) << 8) | rgb[..., 2]
    colours, inverse = np.unique(packed, return_inverse=True)
    table = {(r << 16) | (g << 8) | b: class_id for (r, g, b), class_id in palette.items()}
    unmapped = [int(c) for c in colours if int(c) not in table]
    if unmapped:
        shown = [((c >> 16) & 255, (c >> 8) & 255, c & 255) for c in unmapped[:5]]
        raise MaskError(
            f"{str(path)!r}: colours {shown} are not in data.mask_palette ({len(unmapped)} unmapped); "
            "add them as 'r,g,b': class_id entries."
        )
    ids = np.array([table[int(c)] for c in colours], dtype=np.int64)
    return ids[inverse].reshape(rgb.shape[:2])


def decode_mask(path: Path | str, palette: Mapping[object, int] | None = None) -> np.ndarray:
    """Decode ``path`` to an ``H x W`` ``int64`` array of raw class ids (not yet range-checked)."""
    image = open_image(path)
    if image.mode in _ID_MODES:
        return np.asarray(image).astype(np.int64)  # palette PNGs: the indices themselves
    if image.mode in ("LA", "PA"):
        return np.asarray(image)[..., 0].astype(np.int64)
    if image.mode not in ("RGB", "RGBA"):
        raise MaskError(
            f"{str(path)!r}: mask mode {image.mode!r} is not a class-id image; save masks as palette "
            "(P), 8-bit grey (L) or 16-bit PNGs whose pixel values are the class ids."
        )
    rgb = np.asarray(image)[..., :3]
    if palette:
        return colour_to_ids(rgb, parse_palette(palette), path)
    if (rgb == rgb[..., :1]).all():
        return rgb[..., 0].astype(np.int64)  # grey stored as RGB: the value is the id
    raise MaskError(
        f"{str(path)!r} is an RGB colour mask, but data.mask_palette is not set. Map its colours to "
        "class ids, e.g. data.mask_palette='{\"0,0,0\": 0, \"128,0,0\": 1}', or save the mask as a "
        "palette/grey PNG of class ids."
    )


def check_mask_values(
    mask: np.ndarray, num_classes: int, ignore_index: int, path: Path | str
) -> np.ndarray:
    """Raise naming ``path`` when ``mask`` holds ids outside ``0..num_classes-1`` (ignore excepted)."""
    values = np.unique(mask)
    bad = [int(v) for v in values if (v < 0 or v >= num_classes) and v != ignore_index]
    if bad:
        raise MaskError(
            f"{str(path)!r} has class ids {bad[:10]} outside 0..{num_classes - 1} (data.num_classes="
            f"{num_classes!r}) that are not data.ignore_index={ignore_index!r}. Raise "
            "data.num_classes, set data.ignore_index, or fix the mask."
        )
    return mask


def load_mask(
    path: Path | str,
    num_classes: int,
    ignore_index: int = 255,
    palette: Mapping[object, int] | None = None,
) -> np.ndarray:
    """Decode and validate a mask: ``H x W`` ``int64`` ids in ``0..num_classes-1`` or ``ignore_index``.

    Raises:
        MaskError: RGB colour mask without ``palette``, colours missing from it, or ids out of range.
    """
    return check_mask_values(decode_mask(path, palette), num_classes, ignore_index, path)


def colourise(mask: np.ndarray, palette: Sequence[Colour] | None = None) -> np.ndarray:
    """``H x W`` ids -> ``H x W x 3`` ``uint8`` colours (VOC colours by default)."""
    table = np.asarray(list(palette) if palette is not None else voc_palette(), dtype=np.uint8)
    if len(table) < 256:
        table = np.concatenate([table, np.asarray(voc_palette())[len(table) :].astype(np.uint8)])
    return table[np.clip(mask, 0, len(table) - 1)]


def overlay(image: np.ndarray, mask: np.ndarray, palette: Sequence[Colour] | None = None,
            alpha: float = 0.5) -> np.ndarray:
    """Blend the colourised ``mask`` over ``image`` (``H x W x 3`` ``uint8``); class 0 stays clear."""
    if image.ndim == 2 or image.shape[-1] == 1:
        image = np.repeat(image.reshape(*image.shape[:2], 1), 3, axis=-1)
    colours = colourise(mask, palette).astype(np.float32)
    weight = np.where(mask[..., None] > 0, alpha, 0.0).astype(np.float32)
    blended = image.astype(np.float32) * (1 - weight) + colours * weight
    return np.clip(np.rint(blended), 0, 255).astype(np.uint8)


def index_png_image(mask: np.ndarray, palette: Sequence[Colour] | None = None) -> Image.Image:
    """``mask`` as the image of a palette PNG whose indices are the class ids (16-bit grey above 255)."""
    mask = np.asarray(mask)
    if mask.min(initial=0) < 0:
        raise ValueError("a mask holds negative class ids; class ids start at 0.")
    if mask.max(initial=0) > 255:
        return Image.fromarray(mask.astype(np.uint16))  # no palette holds > 256 ids
    image = Image.fromarray(mask.astype(np.uint8))  # mode L; putpalette turns it into P
    colours = list(palette) if palette is not None else voc_palette()
    colours = colours + voc_palette()[len(colours) :]
    image.putpalette([channel for colour in colours[:256] for channel in colour])
    return image


def write_index_png(
    mask: np.ndarray, path: Path | str, palette: Sequence[Colour] | None = None
) -> Path:
    """Write ``mask`` as a palette PNG whose indices are the class ids (16-bit grey above 255)."""
    path = Path(path)
    if np.asarray(mask).min(initial=0) < 0:
        raise ValueError(f"cannot write negative class ids to {str(path)!r}.")
    path.parent.mkdir(parents=True, exist_ok=True)
    index_png_image(mask, palette).save(path)
    return path
