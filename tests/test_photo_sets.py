"""benchmarks/photo_sets.py: crops of the bundled photographs are split by region, fonts by what the class is not."""

from __future__ import annotations

import itertools
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
photo_sets = pytest.importorskip("photo_sets")


def overlaps(a: list[int], b: list[int]) -> bool:
    """Whether boxes (y0, x0, y1, x1) share any pixel."""
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]


@pytest.mark.parametrize("kind", ["sources", "textures", "areas"])
def test_no_region_of_a_photograph_lands_in_two_splits(kind):
    spec = photo_sets.SetSpec(kind, (6, 4, 4))
    rows = photo_sets.BUILDERS[kind](spec, np.random.default_rng(0))
    splits_of_cell: dict[tuple, set] = {}
    for row in rows:
        splits_of_cell.setdefault((row["source"], row["cell"]), set()).add(row["split"])
    assert all(len(splits) == 1 for splits in splits_of_cell.values())
    for a, b in itertools.combinations(rows, 2):  # no pixel of a photograph in two splits
        if a["source"] == b["source"] and a["split"] != b["split"]:
            assert not overlaps(a["box"], b["box"]), (a["source"], a["box"], b["box"])
    assert {row["split"] for row in rows} == set(photo_sets.SPLITS)
    assert all(row["image"].size == (photo_sets.SIZE, photo_sets.SIZE) for row in rows)


def test_fonts_split_by_character_and_symbols_by_font():
    fonts = photo_sets.fonts_set(photo_sets.SetSpec("fonts", (8, 4, 4)), np.random.default_rng(0))
    chars = {split: {r["char"] for r in fonts if r["split"] == split} for split in photo_sets.SPLITS}
    assert not (chars["train"] & chars["val"]) and not (chars["train"] & chars["test"]) and not (chars["val"] & chars["test"])
    symbols = photo_sets.symbols_set(photo_sets.SetSpec("symbols", (4, 2, 2)), np.random.default_rng(0))
    faces = {split: {r["font"] for r in symbols if r["split"] == split} for split in photo_sets.SPLITS}
    assert not (faces["train"] & faces["val"]) and not (faces["train"] & faces["test"])
    assert len({r["label"] for r in symbols}) == len(photo_sets.SYMBOLS)


def test_a_set_is_written_once_as_a_folder_with_its_record(tmp_path, monkeypatch):
    monkeypatch.setitem(photo_sets.SETS, "tiny", photo_sets.SetSpec("symbols", (2, 1, 1)))
    root = photo_sets.build_set("tiny", tmp_path)
    record = (root / "crops.json").read_text()
    files = sorted(p.relative_to(root).as_posix() for p in root.rglob("*.png"))
    assert len(files) == 4 * len(photo_sets.SYMBOLS) and all(f in record for f in files)
    assert {p.parts[0] for p in map(Path, files)} == set(photo_sets.SPLITS)
    assert photo_sets.build_set("tiny", tmp_path) == root  # kept, not rebuilt


def test_adding_a_set_never_changes_how_an_earlier_one_is_built():
    """Each set's random seed uses its place in SEED_ORDER, which only grows at the end: the first nine
    are rounds 1-2's sets in the sorted order their builds used."""
    assert set(photo_sets.SEED_ORDER) == set(photo_sets.SETS)
    assert list(photo_sets.SEED_ORDER[:9]) == sorted(["sources", "sources-large", "textures", "textures-large", "areas",
                                                      "fonts", "symbols", "areas-large", "symbols-large"])
