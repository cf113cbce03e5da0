"""Embedded *different* data: grey shapes cut out of one texture and laid on another, labelled by shape.

Why this is "different" for the house backbone `charnet` (trained on printed characters: uniform
ink strokes on a flat, dark background): here nothing is a stroke and nothing is flat. Both the
shape and the background are textures (gratings at any angle and frequency, checks, smooth blobs,
noise) with random brightness and contrast, so a shape's outline is often a change of texture, not
of brightness, and the strongest edges in the image are texture edges that say nothing about the
class. Frozen character features therefore separate the classes poorly, while a network that
trains its upper stages learns to see the texture boundary. `advise` measures it: see README.md.

The same generator makes both *different* quadrants: `recipes/small_different.yaml` takes a few
dozen images per class (`data.embedded_length`), `recipes/large_different.yaml` thousands. Shapes
are drawn with `transferkit.data.embedded.scenes.shape_mask` (the segmentation scenes' shapes). Every
image depends only on ``(seed, index)``; labels cycle through the classes, so they are balanced.
"""

from __future__ import annotations

import logging
import math

import numpy as np

from transferkit.data.embedded.scenes import SCENE_CLASSES, shape_mask

log = logging.getLogger(__name__)

SHAPE_CLASS_NAMES: list[str] = list(SCENE_CLASSES[1:])  # circle, square, triangle, star
TEXTURES: tuple[str, ...] = ("grating", "checks", "blobs", "noise")
MEAN_STEP: tuple[float, float] = (35.0, 70.0)  # grey-level difference of fill and background means


def texture(kind: str, rng: np.random.Generator, size: int) -> np.ndarray:
    """A float ``size x size`` texture with values in [-1, 1] (before brightness and contrast)."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64)
    angle = rng.uniform(0, math.pi)
    u = math.cos(angle) * xx + math.sin(angle) * yy
    v = -math.sin(angle) * xx + math.cos(angle) * yy
    period = rng.uniform(3.0, 8.0) * size / 32
    match kind:
        case "grating":
            return np.sin(2 * math.pi * u / period + rng.uniform(0, 2 * math.pi))
        case "checks":
            return np.where((np.floor(u / period) + np.floor(v / period)) % 2 == 0, 1.0, -1.0)
        case "blobs":
            import cv2

            knots = int(rng.integers(3, 8))
            coarse = rng.uniform(-1, 1, size=(knots, knots)).astype(np.float32)
            field = cv2.resize(coarse, (size, size), interpolation=cv2.INTER_CUBIC).astype(np.float64)
            return field / max(float(np.abs(field).max()), 1e-6)
        case "noise":
            return rng.uniform(-1, 1, size=(size, size))
        case _:
            raise ValueError(f"texture kind {kind!r} is unknown; use one of {list(TEXTURES)}.")


def textured_layer(rng: np.random.Generator, size: int, brightness: float,
                   exclude: str | None = None) -> tuple[np.ndarray, str]:
    """A texture (not of kind ``exclude``) around ``brightness`` at a random contrast, in grey levels."""
    kinds = [kind for kind in TEXTURES if kind != exclude]
    kind = kinds[int(rng.integers(len(kinds)))]
    return brightness + rng.uniform(20, 60) * texture(kind, rng, size), kind


def textured_shape(shape: str, rng: np.random.Generator, size: int) -> np.ndarray:
    """One ``size x size`` uint8 image: a ``shape`` filled with one texture over another.

    The fill is brighter or darker on average than the background (by ``MEAN_STEP``),
    so the silhouette is learnable, but its texture edges are as strong as its outline.
    """
    level = rng.uniform(80, 175)
    step = rng.choice([-1.0, 1.0]) * rng.uniform(*MEAN_STEP)
    background, kind = textured_layer(rng, size, level)
    fill, _ = textured_layer(rng, size, level + step, exclude=kind)
    radius = rng.uniform(0.28, 0.45) * size
    cx, cy = rng.uniform(0.5 - 0.12, 0.5 + 0.12, size=2) * size
    footprint = shape_mask(shape, size, cx, cy, radius, rng.uniform(0, 2 * math.pi))
    image = np.where(footprint, fill, background) + rng.normal(0.0, rng.uniform(0.0, 15.0), (size, size))
    return np.clip(np.rint(image), 0, 255).astype(np.uint8)


def generate_shapes(length: int, image_size: int = 32, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``length`` textured shapes as uint8 ``N x S x S x 1`` and int64 labels ``i % 4`` (balanced).

    Raises:
        ValueError: if ``length`` is smaller than the number of classes or ``image_size`` below 16.
    """
    classes = len(SHAPE_CLASS_NAMES)
    if length < classes:
        raise ValueError(f"data.embedded_length={length!r} is too small for shapes; use at least {classes}.")
    if image_size < 16:
        raise ValueError(f"data.image_size={image_size!r} is too small for shapes; use at least 16.")
    labels = np.arange(length, dtype=np.int64) % classes
    images = np.empty((length, image_size, image_size, 1), dtype=np.uint8)
    for index, label in enumerate(labels):
        rng = np.random.default_rng((seed, index))
        images[index, ..., 0] = textured_shape(SHAPE_CLASS_NAMES[label], rng, image_size)
    log.debug("generated %d textured shapes (seed %d)", length, seed)
    return images, labels
