"""The images predict reads: files and folders (`input=`, see `transferkit.data.inputs`), or for
`Run.predict` images in memory too."""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from transferkit.data.decode import image_of_pixels, load_image
from transferkit.data.inputs import list_inputs


def decode_input(item, in_chans: int) -> np.ndarray:
    """One input as a uint8 H x W x in_chans array: an image file (fit's decode path), or an image already
    in memory (a Pillow image or a numpy array, from `Run.predict`) converted the same way."""
    return load_image(item, in_chans=in_chans) if isinstance(item, (str, Path)) else image_of_pixels(item, in_chans)


def is_in_memory(item) -> bool:
    return type(item).__module__.startswith(("PIL.", "numpy")) or hasattr(item, "__array_interface__")


def expand_inputs(inputs) -> tuple[list, list]:
    """`Run.predict`'s inputs: the images `inputs` names (folders expanded) and each one's name for the
    results: its path, or its index in `inputs` when it is in memory. A bad array fails here, naming its index."""
    if isinstance(inputs, (str, os.PathLike)) or is_in_memory(inputs) and getattr(inputs, "ndim", 3) in (2, 3):
        inputs = [inputs]
    if not isinstance(inputs, Iterable):
        raise TypeError(f"inputs: a {type(inputs).__name__}; pass image paths, a folder, Pillow images or "
                        "uint8 numpy arrays (or a list of them).")
    items, names = [], []
    for index, item in enumerate(inputs):
        if isinstance(item, (str, os.PathLike)):
            path = Path(os.fspath(item)).expanduser()
            if not path.exists():
                raise FileNotFoundError(f"inputs[{index}]={str(item)!r} does not exist; pass an image file, a "
                                        "folder of images, a Pillow image or a numpy array.")
            found = list_inputs(path)
            items += found
            names += [str(p) for p in found]
        elif is_in_memory(item):
            try:
                image_of_pixels(item)
            except ValueError as err:
                raise ValueError(f"inputs[{index}]: {err}") from None
            items.append(item)
            names.append(index)
        else:
            raise TypeError(f"inputs[{index}]: a {type(item).__name__}; pass an image path, a folder, a Pillow "
                            "image or a uint8 numpy array (H x W or H x W x C).")
    if not items:
        raise ValueError("inputs is empty; pass at least one image.")
    return items, names
