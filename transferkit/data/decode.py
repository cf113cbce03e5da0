"""The single decode path: image files to ``uint8`` ``H x W x C`` arrays (masks: see ``masks.py``)."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import BinaryIO, Sequence

import numpy as np
from PIL import ExifTags, Image, ImageOps, UnidentifiedImageError

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS: frozenset[str] = frozenset(
    {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff", ".gif"}
)
_ALPHA_MODES = frozenset({"RGBA", "LA", "PA", "RGBa", "La"})
_HIGH_DEPTH_MODES = frozenset({"I", "I;16", "I;16B", "I;16L", "I;16N", "F"})
_TRANSPOSING_ORIENTATIONS = frozenset({5, 6, 7, 8})  # EXIF orientations that swap width and height


class UnreadableImageError(OSError):
    """A file that cannot be decoded; ``reason`` is a short, human-readable cause."""

    def __init__(self, path: Path | str | BinaryIO, reason: str) -> None:
        super().__init__(f"{str(path)!r}: {reason}")
        self.path = Path(path) if isinstance(path, (str, os.PathLike)) else Path(getattr(path, "name", "<memory>"))
        self.reason = reason


def bomb_reason(detail: str) -> str:
    return (
        f"larger than Pillow's decompression-bomb limit ({detail}); if the file is trusted, "
        f"raise PIL.Image.MAX_IMAGE_PIXELS before loading, or downscale it."
    )


def check_pixel_limit(size: tuple[int, int], path: Path | str) -> None:
    """Refuse images above ``PIL.Image.MAX_IMAGE_PIXELS``, where Pillow itself only warns.

    Pillow raises only above twice the limit; a thread-safe check replaces turning its
    warning into an error (``warnings.catch_warnings`` is not thread-safe).
    """
    limit = Image.MAX_IMAGE_PIXELS
    if limit and size[0] * size[1] > limit:
        detail = f"{size[0]} x {size[1]} = {size[0] * size[1]} pixels > {limit}"
        raise UnreadableImageError(path, bomb_reason(detail))


def displayed_size(image: Image.Image) -> tuple[int, int]:
    """``(width, height)`` once EXIF orientation is applied, as :func:`open_image` returns the image.

    A phone photo stored 64 x 48 with orientation 6 (rotated 90 degrees) is displayed 48 x 64.
    """
    width, height = image.size
    orientation = image.getexif().get(ExifTags.Base.Orientation, 1)
    return (height, width) if orientation in _TRANSPOSING_ORIENTATIONS else (width, height)


def open_image(path: Path | str | BinaryIO, min_size: int | None = None) -> Image.Image:
    """Open and fully decode the first frame of ``path``; EXIF orientation applied.

    ``min_size`` lets JPEGs decode at a reduced scale (DCT scaling) while keeping
    both sides at least ``min_size`` pixels: much faster when the result is resized.

    Pillow's decompression-bomb guard stays on: an oversized image raises
    :class:`UnreadableImageError` that says how to lift the limit on purpose.
    """
    try:
        with Image.open(path) as image:
            check_pixel_limit(image.size, path)
            image.seek(0)
            if min_size is not None:
                image.draft(None, (min_size, min_size))
            image.load()
            ImageOps.exif_transpose(image, in_place=True)  # no copy of the (usual) upright image
            return image
    except Image.DecompressionBombError as error:
        raise UnreadableImageError(path, bomb_reason(str(error))) from error
    except FileNotFoundError as error:
        raise UnreadableImageError(path, "file not found") from error
    except UnidentifiedImageError as error:
        raise UnreadableImageError(path, "not an image Pillow can identify") from error
    except (OSError, SyntaxError, ValueError, EOFError) as error:
        # Truncated JPEG/PNG data, bad CRCs, broken headers.
        raise UnreadableImageError(path, f"{type(error).__name__}: {error}") from error


def high_depth_to_8bit(image: Image.Image) -> Image.Image:
    """Scale a 16-bit / 32-bit integer or float grayscale image to 8-bit ``L``."""
    values = np.asarray(image)
    if image.mode == "F":
        values = values.astype(np.float64)
        peak = 1.0 if values.max(initial=0.0) <= 1.0 else 255.0
        scaled = np.clip(values / peak * 255.0, 0, 255)
    else:
        # 16-bit data: 257 maps 0x0101 * k exactly onto k, so 65535 -> 255.
        scaled = np.clip(values.astype(np.float64), 0, 65535) / 257.0
    return Image.fromarray(np.rint(scaled).astype(np.uint8), mode="L")


def composite_on_background(image: Image.Image, background: Sequence[int]) -> Image.Image:
    """Flatten an image with transparency onto an opaque RGB ``background``."""
    rgba = np.asarray(image.convert("RGBA"), dtype=np.float32)
    alpha = rgba[..., 3:] / 255.0
    backdrop = np.asarray(background, dtype=np.float32).reshape(1, 1, 3)
    blended = rgba[..., :3] * alpha + backdrop * (1.0 - alpha)
    return Image.fromarray(np.rint(blended).astype(np.uint8), mode="RGB")


def has_transparency(image: Image.Image) -> bool:
    """Whether ``image`` carries an alpha channel or a transparent palette entry."""
    return image.mode in _ALPHA_MODES or "transparency" in image.info


def to_array(
    image: Image.Image, in_chans: int = 3, background: Sequence[int] = (255, 255, 255)
) -> np.ndarray:
    """Convert any Pillow mode to a ``uint8`` ``H x W x in_chans`` array."""
    if in_chans not in (1, 3):
        raise ValueError(f"model.in_chans={in_chans!r} is not supported; use 1 or 3.")
    if len(background) != 3 or not all(0 <= int(v) <= 255 for v in background):
        raise ValueError(
            f"data.background={tuple(background)!r} is not an RGB colour; use three ints in 0..255."
        )
    if image.mode in _HIGH_DEPTH_MODES:
        image = high_depth_to_8bit(image)
    if has_transparency(image):
        image = composite_on_background(image, background)
    if image.mode not in ("L", "RGB"):
        # CMYK, YCbCr, P, 1, LAB, HSV go through RGB; "1" becomes 0/255.
        image = image.convert("RGB")
    target = "L" if in_chans == 1 else "RGB"
    if image.mode != target:
        image = image.convert(target)
    array = np.asarray(image, dtype=np.uint8)
    if array.ndim == 2:
        array = array[..., None]
    return np.ascontiguousarray(array)


def load_image(
    path: Path | str,
    in_chans: int = 3,
    background: Sequence[int] = (255, 255, 255),
    min_size: int | None = None,
) -> np.ndarray:
    """Decode ``path`` to a ``uint8`` ``H x W x in_chans`` array (fit, test and predict all use this).

    ``min_size`` (JPEG only) decodes at a reduced scale that keeps both sides >= ``min_size``.

    Raises:
        UnreadableImageError: missing, corrupt, truncated or oversized files.
    """
    return to_array(open_image(path, min_size), in_chans=in_chans, background=background)



def image_of_pixels(pixels, in_chans: int = 3, background: Sequence[int] = (255, 255, 255)) -> np.ndarray:
    """An image already in memory (a Pillow image, or a ``uint8`` ``H x W`` / ``H x W x C`` array with C in
    1, 3, 4) as the ``uint8`` ``H x W x in_chans`` array that `load_image` gives for a file.

    Raises:
        ValueError: an array of another dtype or shape.
    """
    if isinstance(pixels, Image.Image):
        return to_array(pixels, in_chans=in_chans, background=background)
    array = np.asarray(pixels)
    if array.dtype != np.uint8:
        raise ValueError(f"a numpy image of dtype {array.dtype}; pass uint8 pixels (0-255), e.g. "
                         "(image * 255).clip(0, 255).astype(np.uint8).")
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[..., 0]
    if not (array.ndim == 2 or array.ndim == 3 and array.shape[2] in (3, 4)) or 0 in array.shape:
        raise ValueError(f"a numpy image of shape {array.shape}; pass H x W (grey) or H x W x C with C = 1, 3 "
                         "or 4 (RGB/RGBA).")
    return to_array(Image.fromarray(np.ascontiguousarray(array)), in_chans=in_chans, background=background)
