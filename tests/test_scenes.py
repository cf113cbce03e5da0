"""Embedded scenes: deterministic from the seed, every class present, masks follow the pixels."""

from __future__ import annotations

import numpy as np
import pytest

from transferkit.data.embedded.scenes import SCENE_CLASSES, SceneDataset, shape_mask


def test_items_are_deterministic_and_order_independent() -> None:
    first, second = SceneDataset(6, 48, seed=3), SceneDataset(6, 48, seed=3)
    backwards = [second[i] for i in reversed(range(6))][::-1]
    for i in range(6):
        np.testing.assert_array_equal(first[i][0], backwards[i][0])
        np.testing.assert_array_equal(first[i][1], backwards[i][1])
    other = SceneDataset(6, 48, seed=4)
    assert not np.array_equal(first[0][0], other[0][0])


def test_types_shapes_and_classes() -> None:
    dataset = SceneDataset(24, 40, seed=0)
    assert len(dataset) == 24 and dataset.classes == SCENE_CLASSES
    seen = set()
    for image, mask in (dataset[i] for i in range(len(dataset))):
        assert image.shape == (40, 40, 3) and image.dtype == np.uint8
        assert mask.shape == (40, 40) and mask.dtype == np.int64
        assert mask.min() >= 0 and mask.max() < len(SCENE_CLASSES)
        seen |= set(np.unique(mask).tolist())
    assert seen == set(range(len(SCENE_CLASSES)))


def test_shapes_stand_out_from_their_background() -> None:
    image, mask = SceneDataset(1, 64, seed=1)[0]
    inside = image[mask > 0].astype(float).mean(axis=0)
    outside = image[mask == 0].astype(float).mean(axis=0)
    assert (mask > 0).sum() > 50
    assert np.linalg.norm(inside - outside) > 20


def test_shape_footprints() -> None:
    circle = shape_mask("circle", 32, 16, 16, 8, 0.0)
    square = shape_mask("square", 32, 16, 16, 8, np.pi / 4)  # axis-aligned, side 8*sqrt(2)
    triangle = shape_mask("triangle", 32, 16, 16, 8, 0.0)
    assert circle[16, 16] and not circle[16, 26] and abs(circle.sum() - np.pi * 64) < 20
    assert abs(square.sum() - 128) < 20 and abs(triangle.sum() - 83) < 15
    with pytest.raises(ValueError, match="hexagon"):
        shape_mask("hexagon", 32, 16, 16, 8, 0.0)


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="data.image_size=8"):
        SceneDataset(4, 8)
    with pytest.raises(IndexError):
        SceneDataset(4, 32)[4]


def test_materialized_scenes_equal_generated_ones():
    from transferkit.data.embedded.scenes import MaterializedScenes, SceneDataset, materialize_if_small

    scenes = SceneDataset(5, 32, seed=3)
    kept = MaterializedScenes(scenes)
    for i in range(5):
        image, mask = scenes[i]
        assert np.array_equal(kept[i][0], image) and np.array_equal(kept[i][1], mask)
        assert kept[i][1].dtype == mask.dtype
    assert isinstance(materialize_if_small(scenes), MaterializedScenes)
    assert materialize_if_small(scenes, max_bytes=10) is scenes
