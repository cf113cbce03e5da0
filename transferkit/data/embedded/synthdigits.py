"""Embedded large+similar data: font digits distorted to look handwritten, scanned like the UCI digits.

Why this is the `large_similar` quadrant for the house backbone `charnet` (trained on 62 printed
characters rendered from matplotlib's fonts): the classes are ten of its source classes and the
glyphs come from the same fonts, so frozen `charnet` features already separate them (similar),
but the images are not the source task itself. Each digit is written with a random stroke width,
slant and affine pose, bent by a smooth random displacement field (the wobble of a pen stroke),
then *digitised exactly as scikit-learn's real handwritten digits were* (UCI "optdigits"): a
binary 32 x 32 bitmap whose on-pixels are counted in non-overlapping 4 x 4 blocks, giving an
8 x 8 image of counts 0..16. That is the `small_similar` target (`data.embedded=digits`, 1797
images) at any size: `data.embedded_length` training images (1000+ per class by default in
`recipes/large_similar.yaml`, above `advise.size_threshold`).

Every image depends only on ``(seed, index)``; labels cycle through the ten digits, so every
class has the same number of images (±1).
"""

from __future__ import annotations

import logging

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from transferkit.data.embedded.fonts import FONT_POINTS, RENDER_SIZE, affine_coefficients, find_font_files

log = logging.getLogger(__name__)

SYNTH_DIGIT_CLASS_NAMES: list[str] = [str(d) for d in range(10)]
BITMAP_SIZE = 32  # UCI optdigits: 32 x 32 binary bitmaps ...
BLOCK = 4  # ... counted in 4 x 4 blocks -> 8 x 8 images of 0..16
_COUNT_MAX = BLOCK * BLOCK
MAX_STROKE = 2  # extra stroke width in pixels at the 96 px rendering (pen thickness)


def displacement_field(rng: np.random.Generator, size: int, amplitude: float, knots: int) -> np.ndarray:
    """A smooth random ``size x size x 2`` displacement in pixels, at most ``amplitude``.

    Uniform noise on a coarse ``knots x knots`` grid, interpolated bicubically: fewer knots bend
    the stroke more gently (the classic elastic distortion, without a wide Gaussian blur).
    """
    import cv2

    coarse = rng.uniform(-amplitude, amplitude, size=(knots, knots, 2)).astype(np.float32)
    return cv2.resize(coarse, (size, size), interpolation=cv2.INTER_CUBIC)


def elastic_warp(image: np.ndarray, field: np.ndarray) -> np.ndarray:
    """Resample a float ``H x W`` image at ``(x, y) + field`` (bilinear, zero outside)."""
    import cv2

    h, w = image.shape
    xx = np.broadcast_to(np.arange(w, dtype=np.float32), (h, w))
    yy = np.broadcast_to(np.arange(h, dtype=np.float32)[:, None], (h, w))
    return cv2.remap(image, xx + field[..., 0], yy + field[..., 1], interpolation=cv2.INTER_LINEAR,
                     borderMode=cv2.BORDER_CONSTANT, borderValue=0.0)


def block_counts(bitmap: np.ndarray, block: int = BLOCK) -> np.ndarray:
    """On-pixels of a binary ``H x W`` bitmap counted per ``block x block`` tile (H, W divisible)."""
    h, w = bitmap.shape
    tiles = bitmap.reshape(h // block, block, w // block, block)
    return tiles.sum(axis=(1, 3))


def write_digit(glyph: Image.Image, rng: np.random.Generator) -> np.ndarray:
    """A rendered glyph posed, bent and binarised: a ``BITMAP_SIZE`` square bitmap (bool)."""
    work = 2 * BITMAP_SIZE
    placed = glyph.transform((work, work), Image.Transform.AFFINE, affine_coefficients(glyph.size, work, rng),
                             Image.Resampling.BILINEAR)
    ink = np.asarray(placed, dtype=np.float32) / 255.0
    field = displacement_field(rng, work, amplitude=rng.uniform(2.0, 5.0), knots=int(rng.integers(3, 6)))
    ink = elastic_warp(ink, field)
    small = np.asarray(Image.fromarray(np.rint(ink * 255).astype(np.uint8)).resize(
        (BITMAP_SIZE, BITMAP_SIZE), Image.Resampling.BOX), dtype=np.float32) / 255.0
    return small > rng.uniform(0.3, 0.6)  # the scanner's threshold varies with pen pressure


def render_digit(font: ImageFont.FreeTypeFont, digit: str, stroke: int) -> Image.Image:
    """The digit drawn sharp (white on black) with ``stroke`` px of extra stroke, cropped to its ink."""
    canvas = Image.new("L", (RENDER_SIZE, RENDER_SIZE), 0)
    ImageDraw.Draw(canvas).text((RENDER_SIZE // 2, RENDER_SIZE // 2), digit, fill=255, font=font, anchor="mm",
                                stroke_width=stroke, stroke_fill=255)
    return canvas.crop(canvas.getbbox() or (0, 0, RENDER_SIZE, RENDER_SIZE))


def digitise(bitmap: np.ndarray) -> np.ndarray:
    """A binary bitmap as the UCI digits store it: uint8 ``8 x 8`` (counts 0..16 scaled to 0..255)."""
    return np.rint(block_counts(bitmap) * (255.0 / _COUNT_MAX)).astype(np.uint8)


def generate_synth_digits(length: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``length`` digits as uint8 ``N x 8 x 8 x 1`` (bright ink on dark) and int64 labels ``i % 10``.

    Raises:
        ValueError: if ``length`` is smaller than the number of classes.
    """
    classes = len(SYNTH_DIGIT_CLASS_NAMES)
    if length < classes:
        raise ValueError(f"data.embedded_length={length!r} is too small for synthdigits; use at least {classes}.")
    fonts = [ImageFont.truetype(str(path), FONT_POINTS) for path in find_font_files()]
    glyphs: dict[tuple[int, int, int], Image.Image] = {}  # rendering dominates; poses and bends do not
    labels = np.arange(length, dtype=np.int64) % classes
    images = np.empty((length, BITMAP_SIZE // BLOCK, BITMAP_SIZE // BLOCK, 1), dtype=np.uint8)
    for index, label in enumerate(labels):
        rng = np.random.default_rng((seed, index))
        key = (int(rng.integers(len(fonts))), int(label), int(rng.integers(0, MAX_STROKE + 1)))
        if key not in glyphs:
            glyphs[key] = render_digit(fonts[key[0]], SYNTH_DIGIT_CLASS_NAMES[label], key[2])
        images[index, ..., 0] = digitise(write_digit(glyphs[key], rng))
    log.debug("generated %d synthetic digits (seed %d)", length, seed)
    return images, labels
