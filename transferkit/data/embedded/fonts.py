"""Embedded source data: printed characters rendered on the fly from matplotlib's bundled fonts.

The images imitate the target domain of the house backbone, scikit-learn's 8x8 digits: bright
ink on a dark background, the glyph scaled to fill its frame (the digits were size-normalised),
then often degraded by block-averaging to 7-16 px and scaling back up, as the digits are.
"""

from __future__ import annotations

import logging
import math
import string
from pathlib import Path
from typing import Any

import matplotlib
import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFilter, ImageFont

logger = logging.getLogger(__name__)

CHARSET: str = string.digits + string.ascii_uppercase + string.ascii_lowercase
# TeX's symbol fonts map ASCII code points to math symbols (arrows, braces), not to letters.
SYMBOL_FONTS: frozenset[str] = frozenset({"cmex10", "cmsy10"})
RENDER_SIZE = 96  # canvas of the first, sharp rendering, in pixels
FONT_POINTS = 64
_CHECK_POINTS = 16
_MIN_UNIQUE_GLYPHS = 56  # of 62: a few (l/I, 0/O) may coincide in small renderings


def font_directory() -> Path:
    """The folder of TrueType fonts that matplotlib ships."""
    return Path(matplotlib.get_data_path()) / "fonts" / "ttf"


def _glyph_bitmaps(path: Path, charset: str) -> list[bytes] | None:
    font = ImageFont.truetype(str(path), _CHECK_POINTS)
    bitmaps = []
    for char in charset:
        image = Image.new("L", (2 * _CHECK_POINTS, 2 * _CHECK_POINTS), 0)
        ImageDraw.Draw(image).text((4, 4), char, fill=255, font=font)
        if image.getbbox() is None:
            return None
        bitmaps.append(image.tobytes())
    return bitmaps


def font_covers(path: Path, charset: str = CHARSET) -> bool:
    """Whether a font draws every character of ``charset`` as a visible, mostly distinct glyph.

    Fonts without a glyph draw the same "missing" box for every character, so they fail the
    distinctness test (matplotlib's display, size-variant and LastResort fonts).
    """
    if path.stem in SYMBOL_FONTS:
        return False
    bitmaps = _glyph_bitmaps(path, charset)
    return bitmaps is not None and len(set(bitmaps)) >= min(len(charset), _MIN_UNIQUE_GLYPHS)


def find_font_files(directory: Path | None = None, charset: str = CHARSET) -> list[Path]:
    """The sorted TrueType files in ``directory`` (default: matplotlib's) that cover ``charset``.

    Raises:
        FileNotFoundError: if no font qualifies.
    """
    directory = font_directory() if directory is None else Path(directory)
    fonts = [path for path in sorted(directory.glob("*.ttf")) if font_covers(path, charset)]
    if not fonts:
        raise FileNotFoundError(
            f"font directory {str(directory)!r} has no .ttf font that draws all of "
            f"{charset!r}; reinstall matplotlib (it ships the DejaVu and STIX fonts)."
        )
    logger.debug("using %d fonts from %s", len(fonts), directory)
    return fonts


def _render_glyph(font: ImageFont.FreeTypeFont, char: str, rng: np.random.Generator) -> Image.Image:
    """The glyph drawn sharp at a random stroke width, cropped to its ink."""
    canvas = Image.new("L", (RENDER_SIZE, RENDER_SIZE), 0)
    stroke = int(rng.integers(0, 4))
    ImageDraw.Draw(canvas).text(
        (RENDER_SIZE // 2, RENDER_SIZE // 2), char, fill=255, font=font, anchor="mm",
        stroke_width=stroke, stroke_fill=255,
    )
    if stroke == 0 and rng.random() < 0.3:
        canvas = canvas.filter(ImageFilter.MinFilter(3))  # thinner than the font's own stroke
    box = canvas.getbbox() or (0, 0, RENDER_SIZE, RENDER_SIZE)
    return canvas.crop(box)


def affine_coefficients(glyph_size: tuple[int, int], out_size: int, rng: np.random.Generator) -> tuple[float, ...]:
    """PIL's inverse affine (output -> glyph pixel) for a random fit, rotation, shear and shift."""
    width, height = glyph_size
    fill = rng.uniform(0.7, 1.0) * out_size
    aspect = math.exp(rng.uniform(-0.2, 0.2))
    scale = fill / max(width, height)
    angle = math.radians(rng.uniform(-15.0, 15.0))
    shear = rng.uniform(-0.3, 0.3)
    cos, sin = math.cos(angle), math.sin(angle)
    rotate_shear = np.array([[cos, -sin], [sin, cos]]) @ np.array([[1.0, shear], [0.0, 1.0]])
    forward = rotate_shear @ np.diag([scale * aspect, scale / aspect])
    shift = out_size / 2 + rng.uniform(-0.08, 0.08, size=2) * out_size
    inverse = np.linalg.inv(forward)
    offset = np.array([width / 2, height / 2]) - inverse @ shift
    return (inverse[0, 0], inverse[0, 1], offset[0], inverse[1, 0], inverse[1, 1], offset[1])


def _degrade(image: Image.Image, image_size: int, rng: np.random.Generator) -> Image.Image:
    """Down to ``image_size``, often via a coarse 7-16 px grid, else sometimes blurred."""
    if rng.random() < 0.6:
        coarse = int(rng.integers(7, 17))
        image = image.resize((coarse, coarse), Image.Resampling.BOX)
        return image.resize((image_size, image_size), Image.Resampling.BILINEAR)
    image = image.resize((image_size, image_size), Image.Resampling.BOX)
    if rng.random() < 0.4:
        image = image.filter(ImageFilter.GaussianBlur(rng.uniform(0.3, 1.2)))
    return image


def _tone(image: Image.Image, rng: np.random.Generator, invert_prob: float) -> np.ndarray:
    """Random ink and background levels plus Gaussian noise, as uint8 ``H x W``."""
    alpha = np.asarray(image, dtype=np.float32) / 255.0
    background = rng.uniform(0.0, 40.0)
    ink = rng.uniform(170.0, 255.0)
    pixels = background + alpha * (ink - background)
    pixels += rng.normal(0.0, rng.uniform(0.0, 12.0), size=pixels.shape)
    if rng.random() < invert_prob:
        pixels = 255.0 - pixels
    return np.clip(np.rint(pixels), 0, 255).astype(np.uint8)


class FontCharDataset(torch.utils.data.Dataset):
    """``length`` printed characters, each generated on the fly and fixed by ``(seed, index)``.

    Items are ``(image, label)`` with ``image`` uint8 ``image_size x image_size x in_chans``
    and ``label`` an index into ``class_names`` (= the characters of ``CHARSET``).
    """

    def __init__(
        self,
        length: int,
        image_size: int = 32,
        seed: int = 0,
        in_chans: int = 1,
        invert_prob: float = 0.0,
    ) -> None:
        if length < 1:
            raise ValueError(f"length={length!r} must be a positive number of images.")
        if image_size < 8:
            raise ValueError(f"data.image_size={image_size!r} is too small; use at least 8.")
        if in_chans not in (1, 3):
            raise ValueError(f"model.in_chans={in_chans!r} is not supported; use 1 or 3.")
        if not 0.0 <= invert_prob <= 1.0:
            raise ValueError(f"invert_prob={invert_prob!r} must lie between 0 and 1.")
        self.length = length
        self.image_size = image_size
        self.seed = seed
        self.in_chans = in_chans
        self.invert_prob = invert_prob
        self.class_names: list[str] = list(CHARSET)
        self.font_files: list[Path] = find_font_files()
        self._fonts: list[ImageFont.FreeTypeFont] | None = None

    def __len__(self) -> int:
        return self.length

    @property
    def labels(self) -> np.ndarray:
        """Every item's label, without rendering (the label is the first draw of the item's generator)."""
        return np.asarray([self._draw_label(np.random.default_rng((self.seed, index)))
                           for index in range(self.length)], dtype=np.int64)

    def _draw_label(self, rng: np.random.Generator) -> int:
        return int(rng.integers(len(self.class_names)))

    def __getstate__(self) -> dict[str, Any]:
        # Font objects do not pickle; each DataLoader worker opens its own on first use.
        return {**self.__dict__, "_fonts": None}

    def _font(self, index: int) -> ImageFont.FreeTypeFont:
        if self._fonts is None:
            self._fonts = [ImageFont.truetype(str(path), FONT_POINTS) for path in self.font_files]
        return self._fonts[index]

    def __getitem__(self, index: int) -> tuple[np.ndarray, int]:
        if not 0 <= index < self.length:
            raise IndexError(f"index {index} is out of range for {self.length} images.")
        rng = np.random.default_rng((self.seed, index))
        label = self._draw_label(rng)
        font = self._font(int(rng.integers(len(self.font_files))))
        glyph = _render_glyph(font, self.class_names[label], rng)
        work_size = 2 * self.image_size
        coefficients = affine_coefficients(glyph.size, work_size, rng)
        placed = glyph.transform(
            (work_size, work_size), Image.Transform.AFFINE, coefficients, Image.Resampling.BILINEAR
        )
        pixels = _tone(_degrade(placed, self.image_size, rng), rng, self.invert_prob)
        return np.repeat(pixels[..., None], self.in_chans, axis=2), label
