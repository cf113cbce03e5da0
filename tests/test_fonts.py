"""The embedded source data: characters rendered on the fly from matplotlib's fonts."""

from __future__ import annotations

import pickle

import numpy as np
import pytest

from transferkit.data.embedded.fonts import CHARSET, FontCharDataset, find_font_files, font_covers, font_directory


@pytest.fixture(scope="module")
def dataset() -> FontCharDataset:
    return FontCharDataset(length=64, image_size=32, seed=0)


def test_charset_is_digits_and_letters(dataset: FontCharDataset) -> None:
    assert len(CHARSET) == 62 and CHARSET[:10] == "0123456789"
    assert dataset.class_names == list(CHARSET)


def test_fonts_cover_the_charset_and_skip_the_rest() -> None:
    names = {path.stem for path in find_font_files()}
    assert {"DejaVuSans", "DejaVuSerif-Bold", "STIXGeneral", "cmr10"} <= names
    # No glyphs for letters (display subsets), one box for everything, or math symbols.
    assert not names & {"DejaVuSansDisplay", "LastResortHE-Regular", "STIXSizOneSymReg", "cmsy10", "cmex10"}
    assert not font_covers(font_directory() / "DejaVuSansDisplay.ttf")


def test_items_have_the_data_contract(dataset: FontCharDataset) -> None:
    for index in range(8):
        image, label = dataset[index]
        assert image.shape == (32, 32, 1) and image.dtype == np.uint8
        assert 0 <= label < 62
    rgb, _ = FontCharDataset(length=2, image_size=48, in_chans=3)[1]
    assert rgb.shape == (48, 48, 3) and (rgb[..., 0] == rgb[..., 2]).all()


def test_same_seed_and_index_give_the_same_item(dataset: FontCharDataset) -> None:
    clone = pickle.loads(pickle.dumps(dataset))  # as a DataLoader worker would receive it
    for index in (0, 5, 63):
        np.testing.assert_array_equal(dataset[index][0], clone[index][0])
        assert dataset[index][1] == clone[index][1]
    other = FontCharDataset(length=64, seed=1)
    assert not np.array_equal(dataset[0][0], other[0][0])


def test_ink_is_bright_and_covers_part_of_the_frame(dataset: FontCharDataset) -> None:
    images = np.stack([dataset[index][0][..., 0] for index in range(32)]).astype(float)
    assert (images.max(axis=(1, 2)) - images.min(axis=(1, 2)) > 80).all()
    coverage = (images > images.mean(axis=(1, 2), keepdims=True)).mean()
    assert 0.1 < coverage < 0.6
    border = np.concatenate([images[:, :2].ravel(), images[:, -2:].ravel()])
    assert border.mean() + 40 < images[:, 12:20, 12:20].mean()  # dark frame, bright strokes


def test_labels_and_fonts_vary(dataset: FontCharDataset) -> None:
    labels = [dataset[i][1] for i in range(64)]
    assert len(set(labels)) > 30
    images = {dataset[i][0].tobytes() for i in range(64)}
    assert len(images) == 64


def test_different_fonts_draw_different_glyphs() -> None:
    from PIL import Image, ImageDraw, ImageFont

    bitmaps = set()
    for path in find_font_files()[:6]:
        canvas = Image.new("L", (40, 40), 0)
        ImageDraw.Draw(canvas).text((4, 4), "g", fill=255, font=ImageFont.truetype(str(path), 28))
        bitmaps.add(canvas.tobytes())
    assert len(bitmaps) == 6


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [({"length": 0}, "length=0"), ({"length": 4, "image_size": 4}, "image_size=4"),
     ({"length": 4, "in_chans": 2}, "in_chans=2")],
)
def test_bad_arguments_are_named(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        FontCharDataset(**kwargs)


def test_index_out_of_range(dataset: FontCharDataset) -> None:
    with pytest.raises(IndexError):
        dataset[64]


def test_labels_match_the_items_without_rendering(dataset: FontCharDataset) -> None:
    assert dataset.labels.dtype == np.int64 and len(dataset.labels) == len(dataset)
    assert dataset.labels[:16].tolist() == [dataset[i][1] for i in range(16)]
