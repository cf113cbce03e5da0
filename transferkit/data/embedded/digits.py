"""Embedded target data: scikit-learn's bundled 8x8 handwritten digits, with a fixed split."""

from __future__ import annotations

import logging

import numpy as np
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

logger = logging.getLogger(__name__)

DIGIT_CLASS_NAMES: list[str] = [str(d) for d in range(10)]
SPLITS: tuple[str, ...] = ("train", "val", "test")
# sklearn's digits are 4-bit counts (0..16) of ink pixels per 4x4 block of a 32x32 bitmap.
_SOURCE_MAX = 16


def load_digits_images() -> tuple[np.ndarray, np.ndarray]:
    """All 1797 digits as uint8 ``N x 8 x 8 x 1`` (bright ink on dark, 0-255) and int64 labels."""
    bunch = load_digits()
    scaled = np.rint(bunch.images * (255.0 / _SOURCE_MAX))
    images = np.clip(scaled, 0, 255).astype(np.uint8)[..., None]
    return images, bunch.target.astype(np.int64)


def _check_fractions(val_fraction: float, test_fraction: float) -> None:
    for key, value in (("val_fraction", val_fraction), ("test_fraction", test_fraction)):
        if not 0.0 < value < 1.0:
            raise ValueError(f"{key}={value!r} must lie strictly between 0 and 1.")
    if val_fraction + test_fraction >= 1.0:
        raise ValueError(
            f"val_fraction={val_fraction!r} + test_fraction={test_fraction!r} leave no "
            f"training images; keep their sum below 1."
        )


def load_digits_splits(
    seed: int = 0, val_fraction: float = 0.2, test_fraction: float = 0.2
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """The digits split into stratified, deterministic ``train``/``val``/``test`` parts.

    Returns:
        ``{split: (images, labels)}`` with images uint8 ``N x 8 x 8 x 1``. The same seed and
        fractions always give the same split (on any machine: the source data is bundled).
    """
    _check_fractions(val_fraction, test_fraction)
    images, labels = load_digits_images()
    indices = np.arange(len(labels))
    rest, test = train_test_split(
        indices, test_size=test_fraction, stratify=labels, random_state=seed
    )
    val_of_rest = val_fraction / (1.0 - test_fraction)
    train, val = train_test_split(
        rest, test_size=val_of_rest, stratify=labels[rest], random_state=seed
    )
    parts = {"train": np.sort(train), "val": np.sort(val), "test": np.sort(test)}
    return {name: (images[idx], labels[idx]) for name, idx in parts.items()}


def subsample_per_class(
    images: np.ndarray, labels: np.ndarray, per_class: int, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Keep ``per_class`` randomly chosen examples of every class (a few-label experiment).

    Raises:
        ValueError: if ``per_class`` is not positive or a class has fewer examples.
    """
    if per_class < 1:
        raise ValueError(f"per_class={per_class!r} must be a positive number of images.")
    rng = np.random.default_rng(seed)
    chosen = []
    for label in np.unique(labels):
        members = np.flatnonzero(labels == label)
        if len(members) < per_class:
            raise ValueError(
                f"per_class={per_class!r} exceeds the {len(members)} images of class "
                f"{label!r}; use at most {len(members)}."
            )
        chosen.append(rng.choice(members, size=per_class, replace=False))
    keep = np.sort(np.concatenate(chosen))
    return images[keep], labels[keep]


def upsample(images: np.ndarray, size: int) -> np.ndarray:
    """Resize uint8 ``N x h x w x C`` images to ``N x size x size x C``.

    Uses OpenCV's bilinear filter, as the eval transforms (``A.Resize``) do, so that features
    computed on these arrays match what a model sees through the datamodule.
    """
    import cv2

    resized = [cv2.resize(image, (size, size), interpolation=cv2.INTER_LINEAR) for image in images]
    return np.stack(resized).reshape(len(images), size, size, images.shape[-1])
