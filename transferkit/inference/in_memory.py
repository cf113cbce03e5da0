"""`Run.predict`'s inputs and outputs: files, folders and images in memory in; the CSV's records (or
masks) out, through the predict loop of `python -m transferkit predict` (transferkit.inference)."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable
from pathlib import Path

log = logging.getLogger("transferkit")


def is_in_memory(item) -> bool:
    return type(item).__module__.startswith(("PIL.", "numpy")) or hasattr(item, "__array_interface__")


def expand_inputs(inputs) -> tuple[list, list]:
    """The images `inputs` names (folders expanded) and each one's name for the results: its path, or its
    index in `inputs` when it is in memory. A bad array fails here, naming its index."""
    from transferkit.data.decode import image_of_pixels
    from transferkit.inference.images import list_inputs

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


def predict_one_model(model, items: list, names: list, top_k: int, batch_size: int):
    """One checkpoint's task, or an exported model's file (model.onnx, model.torchscript.pt), through the
    predict loop of `python -m transferkit predict`."""
    from transferkit.commands.predict import checkpoint_predictor
    from transferkit.inference.outputs import prediction_rows
    from transferkit.inference.run import exported_predictor, predict_mask, predict_probabilities

    predictor = exported_predictor(model) if isinstance(model, Path) else checkpoint_predictor(model)
    if predictor.task == "segmentation":
        return masks_of(lambda item: predict_mask(predictor, item)[1], items, names)
    probs, failed = predict_probabilities(predictor, items, batch_size, 0)
    return finish_rows(prediction_rows, names, probs, failed, predictor.class_names, top_k)


def predict_with_ensemble(ensemble, items: list, names: list, top_k: int, batch_size: int):
    """An ensemble (a cv run's folds) or test-time augmentation, as `predict` averages them."""
    from transferkit.inference.ensemble import ensemble_mask, ensemble_probabilities, member_inputs
    from transferkit.inference.outputs import prediction_rows

    if ensemble.segmentation:
        in_chans, transforms = member_inputs(ensemble)
        return masks_of(lambda item: ensemble_mask(ensemble, in_chans, transforms, item)[1], items, names)
    probs, failed = ensemble_probabilities(ensemble, items, batch_size, 0)
    return finish_rows(prediction_rows, names, probs, failed, ensemble.class_names, top_k)


def finish_rows(prediction_rows, names: list, probs, failed, class_names: list[str], top_k: int):
    for index, reason in failed:
        log.warning("skipped %s: %s", names[index], reason)
    top_k = max(1, min(int(top_k), len(class_names)))
    return as_table(prediction_rows(names, probs, failed, class_names, top_k))


def masks_of(mask, items: list, names: list) -> list:
    """One class-index mask per input (None, with a warning, for an unreadable file)."""
    from transferkit.data.decode import UnreadableImageError

    masks = []
    for item, name in zip(items, names):
        try:
            masks.append(mask(item))
        except UnreadableImageError as error:
            log.warning("skipped %s: %s", name, error.reason)
            masks.append(None)
    return masks


def as_table(rows: list[dict]):
    """A pandas DataFrame of `rows` when pandas is installed, else the list itself."""
    try:
        import pandas
    except ImportError:
        return rows
    return pandas.DataFrame(rows, columns=["path", "label", "probability", "top_k", "error"])
