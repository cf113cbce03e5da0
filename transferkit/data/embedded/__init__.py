"""Generated and bundled data sets behind one name -> spec table (``data.embedded``).

Both datamodules call ``embedded_spec(name, kind).load(...)``: every loader takes the same keyword
arguments (each uses those it needs) and returns :class:`EmbeddedData`. Importing this package does
no work: each loader imports its generator, and torch, when called.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

from transferkit.errors import ConfigError, did_you_mean

SPLITS: tuple[str, ...] = ("train", "val", "test")


@dataclass(frozen=True)
class EmbeddedData:
    """What a loader returns: class names (index = label), one dataset per split, the splits.json record."""

    class_names: list[str]
    sources: dict[str, Any]  # split -> map-style dataset of raw (uint8 image, label or mask) pairs
    record: dict[str, Any]


@dataclass(frozen=True)
class EmbeddedSpec:
    """One embedded data set: what it is, what it needs, and how to load it."""

    name: str
    kind: str  # "classification" | "segmentation"
    description: str
    in_chans: int | None  # the data's own channel count when it matters for the demo, else None
    image_size: int | None  # the data's own size when it matters, else None
    # load(*, length, image_size, in_chans, seed, val_fraction, test_fraction, num_classes) -> EmbeddedData
    load: Callable[..., EmbeddedData]


def split_seeds(seed: int) -> dict[str, int]:
    """Generated sets draw each split from its own seed, so val and test never repeat train."""
    return {"train": seed, "val": seed + 10_000, "test": seed + 20_000}


def classification_lengths(length: int) -> dict[str, int]:
    return {"train": length, "val": max(500, length // 10), "test": max(500, length // 10)}


def load_digits(*, length: int, image_size: int, in_chans: int, seed: int, val_fraction: float,
                test_fraction: float, num_classes: int | None = None) -> EmbeddedData:
    """scikit-learn's 1797 digits; the split seed is fixed at 0 so `seed` changes only training."""
    # lazy: importing the table loads no data library (torch, PIL, scikit-learn, matplotlib)
    from transferkit.data.embedded.digits import DIGIT_CLASS_NAMES, load_digits_splits
    from transferkit.data.sources import ArraySource

    splits = load_digits_splits(seed=0, val_fraction=val_fraction, test_fraction=test_fraction)
    sources = {s: ArraySource(*splits[s], in_chans=in_chans) for s in SPLITS}
    record = {"embedded": "digits", "split_seed": 0, "sizes": {s: len(splits[s][1]) for s in SPLITS}}
    return EmbeddedData(list(DIGIT_CLASS_NAMES), sources, record)


def load_fonts(*, length: int, image_size: int, in_chans: int, seed: int, val_fraction: float,
               test_fraction: float, num_classes: int | None = None) -> EmbeddedData:
    """Characters rendered on the fly, each item fixed by (split seed, index)."""
    # lazy: importing the table loads no data library (torch, PIL, scikit-learn, matplotlib)
    from transferkit.data.embedded.fonts import CHARSET, FontCharDataset

    seeds, lengths = split_seeds(seed), classification_lengths(length)
    sources = {s: FontCharDataset(lengths[s], image_size=image_size, seed=seeds[s], in_chans=in_chans)
               for s in SPLITS}
    return EmbeddedData(list(CHARSET), sources, {"embedded": "fonts", "seeds": seeds, "sizes": lengths})


def load_synthdigits(*, length: int, image_size: int, in_chans: int, seed: int, val_fraction: float,
                     test_fraction: float, num_classes: int | None = None) -> EmbeddedData:
    """Distorted font digits, generated once into memory (8 x 8, like the real digits)."""
    # lazy: importing the table loads no data library (torch, PIL, scikit-learn, matplotlib)
    from transferkit.data.embedded.synthdigits import SYNTH_DIGIT_CLASS_NAMES, generate_synth_digits
    from transferkit.data.sources import ArraySource

    seeds, lengths = split_seeds(seed), classification_lengths(length)
    sources = {s: ArraySource(*generate_synth_digits(lengths[s], seed=seeds[s]), in_chans=in_chans)
               for s in SPLITS}
    record = {"embedded": "synthdigits", "seeds": seeds, "sizes": lengths}
    return EmbeddedData(list(SYNTH_DIGIT_CLASS_NAMES), sources, record)


def load_shapes(*, length: int, image_size: int, in_chans: int, seed: int, val_fraction: float,
                test_fraction: float, num_classes: int | None = None) -> EmbeddedData:
    """Textured shapes at `image_size`, generated once into memory."""
    # lazy: importing the table loads no data library (torch, PIL, scikit-learn, matplotlib)
    from transferkit.data.embedded.shapes import SHAPE_CLASS_NAMES, generate_shapes
    from transferkit.data.sources import ArraySource

    seeds, lengths = split_seeds(seed), classification_lengths(length)
    sources = {s: ArraySource(*generate_shapes(lengths[s], image_size, seed=seeds[s]), in_chans=in_chans)
               for s in SPLITS}
    return EmbeddedData(list(SHAPE_CLASS_NAMES), sources, {"embedded": "shapes", "seeds": seeds, "sizes": lengths})


def load_scenes(*, length: int, image_size: int, in_chans: int, seed: int, val_fraction: float,
                test_fraction: float, num_classes: int | None = None) -> EmbeddedData:
    """RGB scenes with masks; kept in memory when small (items are identical either way)."""
    # lazy: importing the table loads no data library (torch, PIL, scikit-learn, matplotlib)
    from transferkit.data.embedded.scenes import SCENE_CLASSES, SceneDataset, materialize_if_small

    seeds = split_seeds(seed)
    lengths = {"train": length, "val": max(32, length // 8), "test": max(64, length // 4)}
    sources = {s: materialize_if_small(SceneDataset(lengths[s], image_size, seeds[s])) for s in SPLITS}
    return EmbeddedData(list(SCENE_CLASSES), sources, {"embedded": "scenes", "seeds": seeds, "sizes": lengths})


def load_synthetic(*, length: int, image_size: int, in_chans: int, seed: int, val_fraction: float,
                   test_fraction: float, num_classes: int | None = None) -> EmbeddedData:
    """Random images on the training device (benchmarks): val and test are fractions of `length`."""
    # lazy: importing the table loads no data library (torch, PIL, scikit-learn, matplotlib)
    from transferkit.data.embedded.synthetic import SyntheticImages

    classes = int(num_classes or 10)
    seeds = split_seeds(seed)
    lengths = {"train": length, "val": max(1, round(length * val_fraction)),
               "test": max(1, round(length * test_fraction))}
    sources = {s: SyntheticImages(lengths[s], image_size, in_chans, classes, seeds[s]) for s in SPLITS}
    names = [f"class_{i}" for i in range(classes)]
    return EmbeddedData(names, sources, {"embedded": "synthetic", "seeds": seeds, "sizes": lengths})


EMBEDDED: Mapping[str, EmbeddedSpec] = MappingProxyType({spec.name: spec for spec in (
    EmbeddedSpec("digits", "classification",
                 "scikit-learn's 1797 real handwritten digits, 8x8 grey, fixed split (small_similar)",
                 None, None, load_digits),
    EmbeddedSpec("fonts", "classification",
                 "62 printed characters rendered from matplotlib's fonts (the house backbone's source task)",
                 None, None, load_fonts),
    EmbeddedSpec("synthdigits", "classification",
                 "font digits distorted to look handwritten and digitised like the real ones (large_similar)",
                 None, None, load_synthdigits),
    EmbeddedSpec("shapes", "classification",
                 "4 textured shapes on textured backgrounds (small_different / large_different)",
                 None, None, load_shapes),
    EmbeddedSpec("scenes", "segmentation",
                 "circles, squares, triangles and stars on textured RGB backgrounds, with masks",
                 3, 48, load_scenes),
    EmbeddedSpec("synthetic", "classification",
                 "random images and labels generated on the training device (speed benchmarks, no learning)",
                 None, None, load_synthetic),
)})


def embedded_spec(name: str, kind: str | None = None) -> EmbeddedSpec:
    """The spec of ``data.embedded=name``; with ``kind``, it must serve that task kind.

    Raises:
        ConfigError: naming ``data.embedded`` with the valid names (those of ``kind`` if given).
    """
    fits = sorted(n for n, spec in EMBEDDED.items() if kind is None or spec.kind == kind)
    if name not in EMBEDDED:
        raise ConfigError(f"data.embedded={name!r} is unknown; use one of {fits}, or set data.root to "
                          f"an image folder.{did_you_mean(str(name), fits)}")
    spec = EMBEDDED[name]
    if kind is not None and spec.kind != kind:
        raise ConfigError(f"data.embedded={name!r} is a {spec.kind} data set, not a {kind} one; "
                          f"for task.kind={kind!r} use one of {fits}, or set data.root.")
    return spec
