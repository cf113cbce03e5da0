"""The single decode path: awkward files become correct uint8 arrays or clear errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from transferkit.data.decode import UnreadableImageError, load_image


def save(tmp_path: Path, name: str, image: Image.Image, **kwargs) -> Path:
    path = tmp_path / name
    image.save(path, **kwargs)
    return path


def test_rgb_png_round_trips_exactly(tmp_path: Path) -> None:
    pixels = np.random.default_rng(0).integers(0, 256, (5, 7, 3), dtype=np.uint8)
    path = save(tmp_path, "a.png", Image.fromarray(pixels))
    out = load_image(path)
    assert out.dtype == np.uint8 and out.shape == (5, 7, 3)
    np.testing.assert_array_equal(out, pixels)


def test_grayscale_becomes_rgb_and_rgb_becomes_gray(tmp_path: Path) -> None:
    gray = save(tmp_path, "g.png", Image.fromarray(np.full((4, 4), 77, np.uint8), mode="L"))
    rgb = load_image(gray, in_chans=3)
    assert rgb.shape == (4, 4, 3) and (rgb == 77).all()
    red = save(tmp_path, "r.png", Image.new("RGB", (4, 4), (255, 0, 0)))
    luma = load_image(red, in_chans=1)
    assert luma.shape == (4, 4, 1)
    assert int(luma[0, 0, 0]) == 76  # ITU-R 601-2: 0.299 * 255


def test_16bit_png_is_scaled_not_saturated(tmp_path: Path) -> None:
    values = np.array([[0, 257 * 100, 65535, 257 * 200]], dtype=np.uint16)
    path = save(tmp_path, "deep.png", Image.fromarray(values))
    assert Image.open(path).mode.startswith("I")
    out = load_image(path, in_chans=1)
    assert out[0, :, 0].tolist() == [0, 100, 255, 200]


def test_cmyk_jpeg_is_converted_to_rgb(tmp_path: Path) -> None:
    path = save(tmp_path, "c.jpg", Image.new("CMYK", (8, 8), (0, 255, 255, 0)), quality=100)
    out = load_image(path)
    assert out.shape == (8, 8, 3)
    red, green, blue = out[4, 4].astype(int)
    assert red > 240 and green < 15 and blue < 15


def test_rgba_is_composited_on_configurable_background(tmp_path: Path) -> None:
    pixels = np.zeros((2, 2, 4), np.uint8)
    pixels[0, 0] = (200, 0, 0, 255)  # opaque red
    pixels[0, 1] = (200, 0, 0, 0)  # fully transparent
    pixels[1, 0] = (200, 0, 0, 128)  # half
    path = save(tmp_path, "a.png", Image.fromarray(pixels, mode="RGBA"))
    white = load_image(path)
    assert white[0, 0].tolist() == [200, 0, 0]
    assert white[0, 1].tolist() == [255, 255, 255]
    assert white[1, 0].tolist() == [227, 127, 127]  # 200*128/255 + 255*127/255
    black = load_image(path, background=(0, 0, 0))
    assert black[0, 1].tolist() == [0, 0, 0]


def test_la_image_with_alpha_to_gray(tmp_path: Path) -> None:
    pixels = np.array([[[10, 0], [10, 255]]], dtype=np.uint8)
    path = save(tmp_path, "la.png", Image.fromarray(pixels, mode="LA"))
    out = load_image(path, in_chans=1, background=(0, 0, 0))
    assert out[0, :, 0].tolist() == [0, 10]


def test_palette_image_with_transparency_and_one_bit(tmp_path: Path) -> None:
    palette_image = Image.new("P", (2, 1))
    palette_image.putpalette([0, 0, 0, 0, 255, 0] + [0] * 762)
    palette_image.putdata([0, 1])
    path = save(tmp_path, "p.png", palette_image, transparency=0)
    out = load_image(path)
    assert out[0].tolist() == [[255, 255, 255], [0, 255, 0]]
    bits = Image.new("1", (3, 1))
    bits.putdata([0, 1, 0])
    bit_path = save(tmp_path, "b.png", bits)
    assert load_image(bit_path, in_chans=1)[0, :, 0].tolist() == [0, 255, 0]


def test_exif_orientation_is_applied(tmp_path: Path) -> None:
    pixels = np.zeros((4, 6, 3), np.uint8)
    pixels[0, 0] = 255  # white top-left marker in the stored (landscape) image
    image = Image.fromarray(pixels)
    exif = image.getexif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    path = save(tmp_path, "r.png", image, exif=exif)
    out = load_image(path)
    assert out.shape == (6, 4, 3)
    assert out[0, 3].tolist() == [255, 255, 255]


def test_gif_first_frame_webp_bmp_tiff(tmp_path: Path) -> None:
    frames = [Image.new("RGB", (4, 4), colour) for colour in ((255, 0, 0), (0, 0, 255))]
    gif = tmp_path / "anim.gif"
    frames[0].save(gif, save_all=True, append_images=frames[1:])
    assert load_image(gif)[0, 0].tolist() == [255, 0, 0]
    for suffix, kwargs in ((".webp", {"lossless": True}), (".bmp", {}), (".tif", {})):
        path = save(tmp_path, "x" + suffix, Image.new("RGB", (3, 3), (1, 2, 3)), **kwargs)
        assert load_image(path)[1, 1].tolist() == [1, 2, 3]


def test_truncated_and_corrupt_files_raise_with_reason(tmp_path: Path) -> None:
    pixels = np.random.default_rng(1).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    good = save(tmp_path, "good.jpg", Image.fromarray(pixels))
    truncated = tmp_path / "cut.jpg"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(UnreadableImageError, match="truncated") as info:
        load_image(truncated)
    assert info.value.path == truncated
    garbage = tmp_path / "junk.png"
    garbage.write_bytes(b"not an image at all")
    with pytest.raises(UnreadableImageError, match="not an image Pillow can identify"):
        load_image(garbage)
    with pytest.raises(UnreadableImageError, match="file not found"):
        load_image(tmp_path / "missing.png")


def test_decompression_bomb_guard_is_kept(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = save(tmp_path, "big.png", Image.new("RGB", (40, 40)))
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)  # 1600 px: over twice the limit
    with pytest.raises(UnreadableImageError, match="decompression-bomb limit.*MAX_IMAGE_PIXELS"):
        load_image(path)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # between 1x and 2x: Pillow only warns
    with pytest.warns(Image.DecompressionBombWarning), pytest.raises(
        UnreadableImageError, match=r"40 x 40 = 1600 pixels > 1000"
    ):
        load_image(path)


def test_bad_in_chans_and_background_name_the_config_key(tmp_path: Path) -> None:
    path = save(tmp_path, "a.png", Image.new("RGB", (2, 2)))
    with pytest.raises(ValueError, match=r"model.in_chans=4 is not supported; use 1 or 3"):
        load_image(path, in_chans=4)
    with pytest.raises(ValueError, match=r"data.background=\(300, 0, 0\)"):
        load_image(path, background=(300, 0, 0))


def test_min_size_decodes_jpeg_smaller_but_not_below_min(tmp_path: Path) -> None:
    path = save(tmp_path, "big.jpg", Image.new("RGB", (400, 240), (0, 200, 0)), quality=95)
    assert load_image(path).shape == (240, 400, 3)
    small = load_image(path, min_size=60)
    assert small.shape == (60, 100, 3)
    assert abs(int(small[30, 50, 1]) - 200) <= 3

