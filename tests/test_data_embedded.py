"""The one name -> spec table of embedded data sets and the datamodules that load through it."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from transferkit.data.datamodule import ClassificationDataModule
from transferkit.data.embedded import EMBEDDED, EmbeddedData, EmbeddedSpec, embedded_spec
from transferkit.data.segmentation import SegmentationDataModule
from transferkit.errors import ConfigError

LOAD_ARGS = {"length": 8, "image_size": 16, "in_chans": 1, "seed": 0, "val_fraction": 0.15, "test_fraction": 0.15}


def test_table_lists_every_embedded_set_with_its_kind() -> None:
    kinds = {name: spec.kind for name, spec in EMBEDDED.items()}
    assert kinds == {"digits": "classification", "fonts": "classification", "synthdigits": "classification",
                     "shapes": "classification", "scenes": "segmentation",
                     "synthetic": "classification"}
    assert all(isinstance(spec, EmbeddedSpec) and spec.name == name and spec.description
               for name, spec in EMBEDDED.items())
    assert (EMBEDDED["scenes"].in_chans, EMBEDDED["scenes"].image_size) == (3, 48)
    assert EMBEDDED["digits"].in_chans is None and EMBEDDED["digits"].image_size is None
    with pytest.raises(TypeError):
        EMBEDDED["mnist"] = EMBEDDED["digits"]  # type: ignore[index]


def test_importing_the_table_loads_no_data_libraries() -> None:
    code = ("import sys, transferkit.data.embedded; "
            "print([m for m in ('torch', 'sklearn', 'matplotlib', 'PIL', 'cv2') if m in sys.modules])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_unknown_name_says_the_key_and_suggests() -> None:
    with pytest.raises(ConfigError, match=r"data.embedded='digit' is unknown.*'shapes'.*Did you mean 'digits'"):
        embedded_spec("digit")
    assert embedded_spec("fonts", "classification").name == "fonts"


@pytest.mark.parametrize(("name", "kind", "fits"), [
    ("scenes", "classification", r"\['digits', 'fonts', 'shapes', 'synthdigits', 'synthetic'\]"),
    ("digits", "segmentation", r"\['scenes'\]"),
])
def test_wrong_kind_lists_the_names_that_fit(name: str, kind: str, fits: str) -> None:
    with pytest.raises(ConfigError, match=rf"data.embedded={name!r} is a \w+ data set, not a {kind} one.*{fits}"):
        embedded_spec(name, kind)


def test_datamodules_reject_the_other_kind() -> None:
    with pytest.raises(ConfigError, match="data.embedded='scenes'"):
        ClassificationDataModule(embedded="scenes")
    with pytest.raises(ConfigError, match="data.embedded='shapes'"):
        SegmentationDataModule(None, embedded="shapes")


@pytest.mark.parametrize("name", ["digits", "shapes", "scenes"])
def test_loaders_return_three_splits_and_a_record(name: str) -> None:
    args = {**LOAD_ARGS, "image_size": 16 if name != "scenes" else 32}
    data = EMBEDDED[name].load(**args)
    assert isinstance(data, EmbeddedData) and data.record["embedded"] == name
    assert set(data.sources) == {"train", "val", "test"} and all(len(s) for s in data.sources.values())
    image, target = data.sources["train"][0]
    assert image.dtype == np.uint8 and image.ndim == 3
    assert int(np.max(target)) < len(data.class_names)
