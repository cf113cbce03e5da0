"""`show-augs` writes a grid of augmented training samples into a new run directory."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from transferkit.cli import app as cli
from transferkit.evaluation.reports.augment_grid import CELL_PX, HEADER_PX, choose_samples

pytestmark = pytest.mark.slow


def panel(png: np.ndarray, row: int, col: int) -> np.ndarray:
    """The inside of one grid cell (caption excluded)."""
    top, left = HEADER_PX + row * CELL_PX + 24, col * CELL_PX + 12
    return png[top:top + 80, left:left + 80, :3].astype(np.int16)


def test_show_augs_writes_grid_of_folder_samples(image_folder, fast):
    results = cli.run(["show-augs", f"data.root={image_folder}", "augment=strong", *fast,
                       "show_augs.samples=2", "show_augs.variants=3"])
    run_dir = Path(results["run_dir"])
    png_path = run_dir / "augmentations.png"
    assert results["png"] == str(png_path)
    with Image.open(png_path) as image:
        assert image.size == (4 * CELL_PX, 2 * CELL_PX + HEADER_PX) == tuple(results["pixel_size"])
        pixels = np.asarray(image.convert("RGB"))
    assert [s["caption"] for s in results["samples"]] == ["cat", "dog"]  # classes in turn
    # conftest colours cats red and dogs green: the originals in column 0 show it.
    cat, dog = panel(pixels, 0, 0).mean((0, 1)), panel(pixels, 1, 0).mean((0, 1))
    assert cat[0] > cat[1] + 60 and dog[1] > dog[0] + 60
    draws = [panel(pixels, 0, col) for col in (1, 2, 3)]
    assert any(np.abs(a - b).mean() > 5 for a, b in zip(draws, draws[1:]))  # draws differ
    saved = json.loads((run_dir / "results.json").read_text())
    assert saved["augment"] == "strong" and saved["variants"] == 3
    assert "augment:\n  name: strong" in (run_dir / "config.yaml").read_text()


def test_show_augs_grey_digits_with_cifar_recipe(fast):
    results = cli.run(["show-augs", *fast, "model.in_chans=1", "model.weights=none", "augment=cifar",
                       "show_augs.samples=3", "show_augs.variants=2"])
    with Image.open(results["png"]) as image:
        assert image.size == (3 * CELL_PX, 3 * CELL_PX + HEADER_PX)
        pixels = np.asarray(image.convert("RGB")).astype(np.int16)
    assert results["data"] == "embedded:digits"
    assert [s["caption"] for s in results["samples"]] == ["0", "1", "2"]
    cell = panel(pixels, 0, 1)
    assert np.abs(cell[..., 0] - cell[..., 1]).max() <= 1  # grey stays grey
    assert cell.max() - cell.min() > 150  # stretched standardised image, not a flat square


def test_show_augs_option_errors_name_the_key(image_folder, fast):
    with pytest.raises(ValueError, match="show_augs.variants=0"):
        cli.run(["show-augs", f"data.root={image_folder}", *fast, "show_augs.variants=0"])


def test_choose_samples_takes_classes_in_turn():
    labels = np.array([0, 0, 0, 1, 1, 2])
    chosen = choose_samples(labels, 5, seed=0, size=len(labels))
    assert [int(labels[i]) for i in chosen] == [0, 1, 2, 0, 1]
    assert len(set(chosen)) == 5
    assert sorted(choose_samples(labels, 10, seed=0, size=6)) == [0, 1, 2, 3, 4, 5]
    assert len(choose_samples(None, 3, seed=0, size=6)) == 3


def test_show_augs_overlays_masks_for_segmentation(fast):
    results = cli.run(["show-augs", "recipe=fcn32s", *fast, "data.image_size=32", "data.embedded_length=8",
                       "show_augs.samples=2", "show_augs.variants=1"])
    with Image.open(results["png"]) as image:
        assert image.size == (2 * CELL_PX, 2 * CELL_PX + HEADER_PX)
    assert results["data"] == "embedded:scenes"
    assert all(s["caption"].startswith("#") for s in results["samples"])
