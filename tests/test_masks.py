"""Mask decoding keeps class ids (palette, 8-bit, 16-bit) and each bad mask gets its message."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from transferkit.data.masks import (
    MaskError,
    colourise,
    load_mask,
    parse_colour,
    voc_palette,
    write_index_png,
)


@pytest.fixture
def ids() -> np.ndarray:
    rng = np.random.default_rng(0)
    mask = rng.integers(0, 5, (13, 17)).astype(np.int64)
    mask[0, :3] = 255
    return mask


def test_palette_png_keeps_indices_not_colours(tmp_path: Path, ids: np.ndarray) -> None:
    # A palette whose entries are all grey 7 would read as 7 everywhere through RGB/L.
    path = write_index_png(ids, tmp_path / "m.png", palette=[(7, 7, 7)] * 256)
    with Image.open(path) as image:
        assert image.mode == "P"
    loaded = load_mask(path, num_classes=5)
    assert loaded.dtype == np.int64
    np.testing.assert_array_equal(loaded, ids)


def test_default_palette_colours_are_voc(tmp_path: Path, ids: np.ndarray) -> None:
    path = write_index_png(ids, tmp_path / "m.png")
    with Image.open(path) as image:
        rgb = np.asarray(image.convert("RGB"))
    assert tuple(rgb[ids == 1][0]) == (128, 0, 0)
    assert tuple(rgb[ids == 255][0]) == (224, 224, 192)
    np.testing.assert_array_equal(colourise(ids), rgb)


def test_8bit_grey_round_trip(tmp_path: Path, ids: np.ndarray) -> None:
    Image.fromarray(ids.astype(np.uint8)).save(tmp_path / "m.png")
    np.testing.assert_array_equal(load_mask(tmp_path / "m.png", num_classes=5), ids)


def test_16bit_round_trip(tmp_path: Path) -> None:
    mask = np.array([[0, 300, 1000], [65535, 2, 999]], dtype=np.uint16)
    Image.fromarray(mask).save(tmp_path / "m.png")
    with Image.open(tmp_path / "m.png") as image:
        assert image.mode.startswith("I")
    loaded = load_mask(tmp_path / "m.png", num_classes=1001, ignore_index=65535)
    np.testing.assert_array_equal(loaded, mask.astype(np.int64))
    write_index_png(loaded, tmp_path / "again.png")
    np.testing.assert_array_equal(load_mask(tmp_path / "again.png", 1001, 65535), loaded)


def test_rgb_mask_with_palette_maps_colours(tmp_path: Path) -> None:
    rgb = np.zeros((4, 5, 3), dtype=np.uint8)
    rgb[1:3, 1:4] = (255, 0, 0)
    rgb[3, :] = (0, 128, 0)
    Image.fromarray(rgb).save(tmp_path / "m.png")
    palette = {"0,0,0": 0, "#ff0000": 1, "0 128 0": 2}
    loaded = load_mask(tmp_path / "m.png", num_classes=3, palette=palette)
    expected = np.zeros((4, 5), dtype=np.int64)
    expected[1:3, 1:4] = 1
    expected[3, :] = 2
    np.testing.assert_array_equal(loaded, expected)


def test_rgb_mask_without_palette_names_file_and_key(tmp_path: Path) -> None:
    rgb = np.zeros((4, 4, 3), dtype=np.uint8)
    rgb[0, 0] = (255, 0, 0)
    Image.fromarray(rgb).save(tmp_path / "colour.png")
    with pytest.raises(MaskError, match=r"colour\.png.*RGB colour mask.*data\.mask_palette"):
        load_mask(tmp_path / "colour.png", num_classes=3)


def test_rgb_colour_missing_from_palette(tmp_path: Path) -> None:
    rgb = np.zeros((4, 4, 3), dtype=np.uint8)
    rgb[0, 0] = (1, 2, 3)
    Image.fromarray(rgb).save(tmp_path / "m.png")
    with pytest.raises(MaskError, match=r"m\.png.*\(1, 2, 3\).*not in data\.mask_palette"):
        load_mask(tmp_path / "m.png", num_classes=3, palette={"0,0,0": 0})


def test_out_of_range_ids_name_file_and_values(tmp_path: Path, ids: np.ndarray) -> None:
    ids[5, 5], ids[6, 6] = 9, 7
    write_index_png(ids, tmp_path / "bad.png")
    with pytest.raises(MaskError, match=r"bad\.png.*\[7, 9\].*data\.num_classes=5"):
        load_mask(tmp_path / "bad.png", num_classes=5)


def test_ignore_index_is_allowed_but_other_large_values_are_not(tmp_path: Path, ids: np.ndarray) -> None:
    write_index_png(ids, tmp_path / "m.png")
    with pytest.raises(MaskError, match=r"\[255\].*data\.ignore_index=0"):
        load_mask(tmp_path / "m.png", num_classes=5, ignore_index=0)


def test_parse_colour_rejects_garbage() -> None:
    assert parse_colour("#0a0B0c") == (10, 11, 12)
    assert parse_colour((1, 2, 3)) == (1, 2, 3)
    with pytest.raises(ValueError, match="data.mask_palette key 'red'"):
        parse_colour("red")
    with pytest.raises(ValueError, match="outside 0..255"):
        parse_colour("1,2,300")


def test_voc_palette_first_entries() -> None:
    assert voc_palette()[:4] == [(0, 0, 0), (128, 0, 0), (0, 128, 0), (128, 128, 0)]
