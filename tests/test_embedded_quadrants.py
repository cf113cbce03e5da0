"""The generated embedded datasets behind the quadrant recipes: deterministic, well-formed, balanced."""

from __future__ import annotations

import numpy as np
import pytest

from transferkit.cli import app as cli
from transferkit.data.datamodule import ClassificationDataModule
from transferkit.data.embedded.digits import load_digits_images
from transferkit.data.embedded.shapes import SHAPE_CLASS_NAMES, generate_shapes, texture
from transferkit.data.embedded.synthdigits import block_counts, generate_synth_digits


def test_synth_digits_are_deterministic_and_shaped_like_the_real_digits():
    images, labels = generate_synth_digits(20, seed=3)
    again, _ = generate_synth_digits(20, seed=3)
    other, _ = generate_synth_digits(20, seed=4)
    real, _ = load_digits_images()
    np.testing.assert_array_equal(images, again)
    assert not np.array_equal(images, other)
    assert images.shape[1:] == real.shape[1:] == (8, 8, 1) and images.dtype == np.uint8
    assert labels.tolist() == [i % 10 for i in range(20)]
    # UCI digitisation: each pixel is a count 0..16 of a 4 x 4 block, scaled to 0..255.
    assert set(np.unique(images).tolist()) <= {round(c * 255 / 16) for c in range(17)}
    assert images.reshape(20, -1).max(axis=1).min() > 0  # every digit has ink


def test_item_depends_only_on_seed_and_index():
    short, _ = generate_synth_digits(10, seed=1)
    long, _ = generate_synth_digits(30, seed=1)
    np.testing.assert_array_equal(short, long[:10])
    shapes_short, _ = generate_shapes(8, 32, seed=1)
    shapes_long, _ = generate_shapes(16, 32, seed=1)
    np.testing.assert_array_equal(shapes_short, shapes_long[:8])


def test_block_counts_counts_on_pixels_per_tile():
    bitmap = np.zeros((8, 8), dtype=bool)
    bitmap[:4, :4] = True
    bitmap[7, 7] = True
    assert block_counts(bitmap).tolist() == [[16, 0], [0, 1]]


def test_shapes_are_deterministic_balanced_and_textured():
    images, labels = generate_shapes(40, 32, seed=0)
    np.testing.assert_array_equal(images, generate_shapes(40, 32, seed=0)[0])
    assert images.shape == (40, 32, 32, 1) and images.dtype == np.uint8
    assert np.bincount(labels).tolist() == [10] * len(SHAPE_CLASS_NAMES)
    assert images.reshape(40, -1).std(axis=1).min() > 5  # never a flat image


@pytest.mark.parametrize("kind", ["grating", "checks", "blobs", "noise"])
def test_textures_stay_in_range(kind):
    values = texture(kind, np.random.default_rng(0), 32)
    assert values.shape == (32, 32) and np.abs(values).max() <= 1.0 + 1e-9


def test_generators_reject_bad_sizes():
    with pytest.raises(ValueError, match="data.embedded_length"):
        generate_synth_digits(3)
    with pytest.raises(ValueError, match="data.image_size"):
        generate_shapes(8, image_size=8)
    with pytest.raises(ValueError, match="texture kind"):
        texture("plaid", np.random.default_rng(0), 16)


@pytest.mark.parametrize("embedded,classes", [("synthdigits", 10), ("shapes", 4)])
def test_datamodule_splits_are_disjoint_draws(embedded, classes):
    dm = ClassificationDataModule(embedded=embedded, embedded_length=40, in_chans=1, seed=5, num_workers=0)
    dm.scan()
    assert len(dm.class_names) == classes
    assert dm.sizes() == {"train": 40, "val": 500, "test": 500}
    assert np.bincount(dm.labels("train")).tolist() == [40 // classes] * classes
    image, label = dm.sources["train"][0]
    assert image.ndim == 3 and image.shape[-1] == 1 and 0 <= label < classes
    assert not np.array_equal(dm.sources["train"][0][0], dm.sources["test"][0][0])
    batch, _ = next(iter(dm.train_dataloader()))
    assert tuple(batch.shape[1:]) == (1, 32, 32)


def test_datamodule_rejects_unknown_embedded():
    with pytest.raises(ValueError, match="data.embedded='mnist'"):
        ClassificationDataModule(embedded="mnist")


@pytest.mark.parametrize("recipe,embedded,per_class", [
    ("small_similar", "digits", None), ("small_different", "shapes", 30),
    ("large_similar", "synthdigits", 1200), ("large_different", "shapes", 2000),
])
def test_quadrant_recipes_choose_their_embedded_data(recipe, embedded, per_class):
    cfg = cli.compose_config([f"recipe={recipe}"])
    assert cfg.data.root is None and cfg.data.embedded == embedded
    if per_class is not None:
        classes = 10 if embedded == "synthdigits" else len(SHAPE_CLASS_NAMES)
        assert cfg.data.embedded_length == per_class * classes
        large = recipe.startswith("large")
        assert (per_class >= cfg.advise.size_threshold) == large
