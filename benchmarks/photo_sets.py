"""Real-image classification folders for `benchmarks/auto_vs_fixed.py`, built offline from what the
installed libraries ship: crops of photographs (scikit-learn's `load_sample_images`: china.jpg,
flower.jpg; matplotlib's sample data: grace_hopper.jpg, the MRI slice s1045.ima.gz, the Jacksboro
fault elevation model) and renders of matplotlib's fonts.

Crops are split by REGION of their source: each source is cut into a grid of cells, every cell goes
to one split (train, val or test) and a crop lies wholly inside one cell, so no part of a photograph
is seen in two splits. Fonts are split by what the class is not about: the `fonts` row by character
(the characters of val and test are never trained on), the `symbols` row by font.

    python benchmarks/photo_sets.py /tmp/photo_sets            # every set, under <out>/<name>
    python benchmarks/photo_sets.py /tmp/photo_sets --sets textures

Each set is `<out>/<name>/{train,val,test}/<class>/<n>.png` plus `crops.json`, which records every
image's split, class and where it came from (source, cell, box; font, character).
"""

from __future__ import annotations

import argparse
import json
import logging
import string
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import matplotlib
import numpy as np
from matplotlib import cbook
from PIL import Image, ImageDraw, ImageFont

log = logging.getLogger("photo_sets")
SPLITS = ("train", "val", "test")
SIZE = 32  # saved image size: the house backbone's input (grey 32 px); other models resize
MIN_CROP_STD = 8.0  # a crop flatter than this (MRI background, clear sky) says nothing about its class


@dataclass(frozen=True)
class Cell:
    """One region of a source image: rows y0:y1, columns x0:x1."""

    source: str
    index: int
    box: tuple[int, int, int, int]  # (y0, x0, y1, x1)


@dataclass(frozen=True)
class SetSpec:
    """A folder to build: its generator and the images per class in each split."""

    kind: str
    per_class: tuple[int, int, int]  # train, val, test
    seed: int = 0


# The sets; auto_vs_fixed.py's rows use them (which rows design the race and which report: see there).
SETS: dict[str, SetSpec] = {
    "sources": SetSpec("sources", (40, 8, 80)),         # which photograph a crop comes from (5 classes)
    "sources-large": SetSpec("sources", (60, 60, 80), seed=1),
    "textures": SetSpec("textures", (25, 5, 50)),       # which texture: sky, foliage, petals, ... (8 classes)
    "textures-large": SetSpec("textures", (40, 30, 50), seed=1),
    "areas": SetSpec("areas", (20, 5, 40)),             # which area of which photograph (12 classes)
    "fonts": SetSpec("fonts", (60, 10, 80)),            # which font a character is set in (6 classes)
    "symbols": SetSpec("symbols", (30, 6, 60)),         # which math symbol (10 classes), fonts split
    # Report round 2 (built after round 1's sources-large missed and became a design row):
    "areas-large": SetSpec("areas", (20, 20, 40), seed=2),
    "symbols-large": SetSpec("symbols", (30, 20, 60), seed=2),
    # Report round 3 (built after round 2's areas and areas-large missed and every earlier row became a
    # design row): fresh draws, small and large validation sets.
    "sources-r3": SetSpec("sources", (40, 20, 80), seed=3),
    "textures-r3": SetSpec("textures", (25, 5, 50), seed=3),
    "areas-r3": SetSpec("areas", (20, 10, 40), seed=3),
    "fonts-r3": SetSpec("fonts", (60, 40, 80), seed=3),
}
# Each set's place in its random generator's seed. Rounds 1-2 used sorted(SETS).index(name); new sets
# are appended, so adding one never changes how an earlier set is built.
SEED_ORDER: tuple[str, ...] = ("areas", "areas-large", "fonts", "sources", "sources-large", "symbols",
                               "symbols-large", "textures", "textures-large",
                               "sources-r3", "textures-r3", "areas-r3", "fonts-r3")


def load_sources() -> dict[str, np.ndarray]:
    """The bundled real images as H x W x 3 uint8 arrays."""
    from sklearn.datasets import load_sample_images  # lazy: only building a set needs scikit-learn

    sources = dict(zip(("china", "flower"), load_sample_images().images))
    with Image.open(cbook.get_sample_data("grace_hopper.jpg")) as image:
        sources["hopper"] = np.asarray(image.convert("RGB"))
    with cbook.get_sample_data("s1045.ima.gz") as handle:
        mri = np.frombuffer(handle.read(), ">u2").reshape(256, 256).astype(np.float64)
    sources["mri"] = grey_to_rgb(np.kron(mri, np.ones((2, 2))))  # 512 px: cells as large as the photos'
    elevation = np.asarray(cbook.get_sample_data("jacksboro_fault_dem.npz")["elevation"], dtype=np.float64)
    sources["terrain"] = grey_to_rgb(np.kron(elevation, np.ones((2, 2))))
    return sources


def grey_to_rgb(values: np.ndarray) -> np.ndarray:
    low, high = np.percentile(values, [1, 99])
    scaled = np.clip((values - low) / max(high - low, 1e-9), 0, 1) * 255
    return np.repeat(scaled.astype(np.uint8)[..., None], 3, axis=2)


def grid_cells(source: str, shape: tuple[int, ...], rows: int, cols: int,
               within: tuple[int, int, int, int] | None = None) -> list[Cell]:
    """`rows` x `cols` disjoint cells tiling `within` (default: the whole image)."""
    y0, x0, y1, x1 = within or (0, 0, shape[0], shape[1])
    ys, xs = np.linspace(y0, y1, rows + 1).astype(int), np.linspace(x0, x1, cols + 1).astype(int)
    return [Cell(source, r * cols + c, (int(ys[r]), int(xs[c]), int(ys[r + 1]), int(xs[c + 1])))
            for r in range(rows) for c in range(cols)]


def assign_cells(cells: list[Cell], rng: np.random.Generator, fractions=(0.5, 0.2, 0.3)) -> dict[str, list[Cell]]:
    """Each cell to exactly one split (at least one cell each), in a seeded random order."""
    order = [cells[i] for i in rng.permutation(len(cells))]
    n_val = max(1, round(fractions[1] * len(cells)))
    n_test = max(1, round(fractions[2] * len(cells)))
    n_train = len(cells) - n_val - n_test
    assert n_train >= 1, f"{len(cells)} cells cannot feed three splits"
    return {"train": order[:n_train], "val": order[n_train:n_train + n_val], "test": order[n_train + n_val:]}


def textured(cells: list[Cell], sources: dict[str, np.ndarray]) -> list[Cell]:
    """The cells that are not flat (the MRI's black surround); all of them if fewer than 3 are not."""
    kept = [c for c in cells if sources[c.source][c.box[0]:c.box[2], c.box[1]:c.box[3]].std() >= 2 * MIN_CROP_STD]
    return kept if len(kept) >= 3 else cells


def random_crop(image: np.ndarray, cell: Cell, rng: np.random.Generator, tries: int = 20) -> tuple[np.ndarray, tuple]:
    """A square crop lying wholly inside `cell` (side 40-100 % of the cell's shorter side), not flat."""
    y0, x0, y1, x1 = cell.box
    side_max = min(y1 - y0, x1 - x0)
    for _ in range(tries):
        side = int(rng.integers(max(8, int(0.4 * side_max)), side_max + 1))
        top, left = int(rng.integers(y0, y1 - side + 1)), int(rng.integers(x0, x1 - side + 1))
        crop = image[top:top + side, left:left + side]
        if crop.std() >= MIN_CROP_STD:
            break
    return crop, (top, left, top + side, left + side)


def recolour(pixels: np.ndarray, rng: np.random.Generator, channels: bool = True) -> np.ndarray:
    """A random gamma (and with `channels` a random channel order): grey levels change, textures stay."""
    out = pixels[..., rng.permutation(3) if channels else slice(None)].astype(np.float64) / 255
    return (np.clip(out ** rng.uniform(0.6, 1.6), 0, 1) * 255).astype(np.uint8)


def to_image(pixels: np.ndarray) -> Image.Image:
    return Image.fromarray(np.ascontiguousarray(pixels)).resize((SIZE, SIZE), Image.Resampling.BILINEAR)


def crop_rows(labelled: dict[str, list[Cell]], sources: dict[str, np.ndarray], spec: SetSpec,
              rng: np.random.Generator, label_of: Callable[[int], tuple[str, int]] | None = None,
              classes: int = 1, channels: bool = True) -> list[dict]:
    """Crops per class and split, each turned by a random multiple of 90 degrees. `labelled`: class ->
    its cells; with `label_of`, the class is the crop's (class name, quarter turns) by its number
    instead, over `classes` classes, and `labelled` has one key."""
    rows = []
    for name, cells in labelled.items():
        splits = assign_cells(textured(cells, sources), rng)
        for split, count in zip(SPLITS, spec.per_class):
            for i in range(count * classes):
                cell = splits[split][int(rng.integers(len(splits[split])))]
                crop, box = random_crop(sources[cell.source], cell, rng)
                label, turns = (name, int(rng.integers(4))) if label_of is None else label_of(i)
                pixels = np.rot90(recolour(crop, rng, channels), turns)
                rows.append({"split": split, "label": label, "image": to_image(pixels), "source": cell.source,
                             "cell": cell.index, "box": list(box), "turns": turns})
    return rows


def sources_set(spec: SetSpec, rng: np.random.Generator) -> list[dict]:
    """Class = which source the crop comes from (5 classes); 8 x 8 cells per source (val and test
    crops come from a dozen regions each, so they stand for the whole photograph)."""
    sources = load_sources()
    return crop_rows({name: grid_cells(name, image.shape, 8, 8) for name, image in sources.items()},
                     sources, spec, rng)


# Texture classes: boxes (y0, x0, y1, x1) of one texture each in the colour photographs.
TEXTURES: dict[str, tuple[str, tuple[int, int, int, int]]] = {
    "sky": ("china", (0, 330, 150, 640)), "foliage": ("china", (300, 340, 427, 640)),
    "water": ("china", (215, 345, 290, 520)), "pagoda": ("china", (95, 75, 360, 330)),
    "petals": ("flower", (90, 140, 330, 400)), "blur": ("flower", (0, 420, 300, 640)),
    "flag": ("hopper", (0, 0, 330, 130)), "uniform": ("hopper", (440, 40, 600, 470)),
}


def textures_set(spec: SetSpec, rng: np.random.Generator) -> list[dict]:
    """Class = the texture (8 classes); each texture's box is cut into cells of about 50 px."""
    sources = load_sources()
    labelled = {}
    for index, (name, (source, box)) in enumerate(TEXTURES.items()):
        rows, cols = max(2, round((box[2] - box[0]) / 50)), max(2, round((box[3] - box[1]) / 50))
        labelled[name] = [Cell(source, 1000 * index + c.index, c.box)
                          for c in grid_cells(source, sources[source].shape, rows, cols, box)]
    return crop_rows(labelled, sources, spec, rng, channels=False)


def areas_set(spec: SetSpec, rng: np.random.Generator) -> list[dict]:
    """Class = which quadrant of which colour photograph (12 classes); 4 x 4 cells per quadrant."""
    sources = {k: v for k, v in load_sources().items() if k in ("china", "flower", "hopper")}
    labelled = {}
    for name, image in sources.items():
        h, w = image.shape[:2]
        for q, (qy, qx) in enumerate(((0, 0), (0, 1), (1, 0), (1, 1))):
            quadrant = (qy * h // 2, qx * w // 2, (qy + 1) * h // 2, (qx + 1) * w // 2)
            labelled[f"{name}-{q}"] = [Cell(name, q * 16 + c.index, c.box)
                                       for c in grid_cells(name, image.shape, 4, 4, quadrant)]
    return crop_rows(labelled, sources, spec, rng)


FONT_FAMILY = ("DejaVuSans", "DejaVuSerif", "DejaVuSansMono", "STIXGeneral", "cmr10", "cmtt10")
SYMBOL_FONTS = ("DejaVuSans", "DejaVuSerif", "DejaVuSansMono", "DejaVuSans-Bold", "DejaVuSerif-Italic",
                "STIXGeneral", "STIXGeneralBol", "DejaVuSerif-Bold", "DejaVuSans-Oblique")
SYMBOLS = "∑∫∞∂∇≈±×÷√"


def render_glyph(char: str, font_name: str, rng: np.random.Generator) -> Image.Image:
    """`char` in `font_name` at a random size and angle, random ink on a random paper colour."""
    font = ImageFont.truetype(str(Path(matplotlib.get_data_path()) / "fonts" / "ttf" / f"{font_name}.ttf"),
                              int(rng.integers(40, 64)))
    paper, ink = rng.integers(0, 256, 3), rng.integers(0, 256, 3)
    while np.abs(paper.astype(int) - ink.astype(int)).sum() < 200:
        ink = rng.integers(0, 256, 3)
    image = Image.new("RGB", (96, 96), tuple(int(v) for v in paper))
    ImageDraw.Draw(image).text((48, 48), char, fill=tuple(int(v) for v in ink), font=font, anchor="mm")
    image = image.rotate(float(rng.uniform(-25, 25)), resample=Image.Resampling.BILINEAR,
                         fillcolor=tuple(int(v) for v in paper))
    return image.crop((16, 16, 80, 80)).resize((SIZE, SIZE), Image.Resampling.BILINEAR)


def partition(items: list, rng: np.random.Generator, fractions=(0.6, 0.2, 0.2)) -> dict[str, list]:
    order = [items[i] for i in rng.permutation(len(items))]
    n_val, n_test = max(1, round(fractions[1] * len(items))), max(1, round(fractions[2] * len(items)))
    n_train = len(items) - n_val - n_test
    return {"train": order[:n_train], "val": order[n_train:n_train + n_val], "test": order[n_train + n_val:]}


def fonts_set(spec: SetSpec, rng: np.random.Generator) -> list[dict]:
    """Class = the font (6 classes); the characters are split, so style must carry over to new ones."""
    chars = partition(list(string.ascii_letters + string.digits), rng)
    rows = []
    for font_name in FONT_FAMILY:
        for split, count in zip(SPLITS, spec.per_class):
            for i in range(count):
                char = chars[split][int(rng.integers(len(chars[split])))]
                rows.append({"split": split, "label": font_name, "image": render_glyph(char, font_name, rng),
                             "font": font_name, "char": char})
    return rows


def symbols_set(spec: SetSpec, rng: np.random.Generator) -> list[dict]:
    """Class = the math symbol (10 classes); the fonts are split, so a symbol is tested in new fonts."""
    fonts = partition(list(SYMBOL_FONTS), rng, (0.55, 0.2, 0.25))
    rows = []
    for index, char in enumerate(SYMBOLS):
        for split, count in zip(SPLITS, spec.per_class):
            for i in range(count):
                font_name = fonts[split][i % len(fonts[split])]
                rows.append({"split": split, "label": f"s{index}", "image": render_glyph(char, font_name, rng),
                             "font": font_name, "char": char})
    return rows


BUILDERS: dict[str, Callable[[SetSpec, np.random.Generator], list[dict]]] = {
    "sources": sources_set, "textures": textures_set, "areas": areas_set, "fonts": fonts_set, "symbols": symbols_set}


def seed_index(name: str) -> int:
    """A set's place in its generator's seed: in SEED_ORDER, or after it (a set made up elsewhere)."""
    return SEED_ORDER.index(name) if name in SEED_ORDER else len(SEED_ORDER)


def build_set(name: str, out: Path) -> Path:
    """Write set `name` under `out/name` (once: an existing complete folder is kept) and return its root."""
    spec = SETS[name]
    root = out / name
    if (root / "crops.json").is_file():
        return root
    rows = BUILDERS[spec.kind](spec, np.random.default_rng([spec.seed, seed_index(name)]))
    counters: dict[tuple[str, str], int] = {}
    records = []
    for row in rows:
        key = (row["split"], row["label"])
        counters[key] = counters.get(key, 0) + 1
        path = root / row["split"] / row["label"] / f"{counters[key]:04d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        row["image"].save(path)
        records.append({**{k: v for k, v in row.items() if k != "image"}, "path": str(path.relative_to(root))})
    (root / "crops.json").write_text(json.dumps({"set": name, "spec": asdict(spec), "images": records}, indent=1))
    log.info("%s: %d images in %s", name, len(records), root)
    return root


def main(argv: list[str] | None = None) -> None:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--sets", nargs="+", default=list(SETS), choices=list(SETS))
    args = parser.parse_args(argv)
    for name in args.sets:
        build_set(name, args.out)


if __name__ == "__main__":
    main()
