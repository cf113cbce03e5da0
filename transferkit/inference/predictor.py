"""The one predictor: a checkpoint's task, an ensemble of checkpoints (each member preparing images its
own way, each with its test-time augmentation), or a model written by export; on image files
(`python -m transferkit predict`) or on images in memory too (`Run.predict`). One dataset reads the
inputs, one set of writers (`transferkit.inference.outputs`) gives the CSV rows or the masks.
Imports neither Lightning nor timm: predicting from an exported model needs neither."""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from transferkit.data.inputs import InputSpec, as_tensor, list_inputs
from transferkit.inference.exported import load_exported
from transferkit.inference.images import decode_input
from transferkit.inference.outputs import (as_table, masks_of, multilabel_columns, multilabel_rows, prediction_rows,
                                           unused_output, write_masks, write_multilabel_rows, write_rows)
from transferkit.inference.spec import CheckpointSpec
from transferkit.tasks.calibration import apply_temperature
from transferkit.tasks.loading import load_model
from transferkit.tasks.tta import resize_scores

# views (member i's batch in member i's preprocessing), the images' own size for masks -> scores
Scores = Callable[[list[torch.Tensor], "tuple[int, int] | None"], torch.Tensor]


@dataclass(frozen=True)
class Predictor:
    """A model as predict sees it. Member i prepares an image as `transforms[i]` with `in_chans[i]`
    channels (a single model has one member); `scores(views, size)` gives N x C probabilities, or for
    segmentation N x C x H x W scores at `size` whose argmax is the mask."""

    kind: str  # classification | multilabel | segmentation
    class_names: list[str]
    in_chans: list[int]
    transforms: list[Callable]
    scores: Scores
    input_formats: list[InputSpec] = field(default_factory=list)  # member i's preprocessing, as recorded
    thresholds: list[float] | None = None  # multilabel: a class is predicted at p >= its threshold (None: 0.5)

    def rows(self, names: list, probs: dict[int, np.ndarray], failed: list[tuple[int, str]], top_k: int) -> list[dict]:
        """The records of predictions.csv (and `Run.predict`) for these probabilities."""
        if self.kind == "multilabel":
            return multilabel_rows(names, probs, failed, self.class_names, self.thresholds)
        return prediction_rows(names, probs, failed, self.class_names, top_k)


def device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def logit_scores(logits: Callable[[torch.Tensor], torch.Tensor], kind: str, temperature: float | None = None) -> Scores:
    """One model's scores: the softmax of its logits (divided by the calibration `temperature`); for masks
    its logits resized to the image."""
    def scores(views: list[torch.Tensor], size: tuple[int, int] | None = None) -> torch.Tensor:
        out = logits(views[0]).float().cpu()
        if kind == "segmentation":
            return resize_scores(out, size)
        if kind == "multilabel":  # one sigmoid per class; calibration is single-label's
            return torch.sigmoid(out)
        return torch.softmax(apply_temperature(out, temperature), dim=-1)

    return scores


def task_predictor(task, calibration: str = "temperature") -> Predictor:
    """A task loaded from a checkpoint, on the GPU when there is one; with `calibration=temperature` its
    probabilities use the temperature the checkpoint carries (none: the raw softmax)."""
    target = device()
    task.to(target)
    temperature = task.temperature if calibration == "temperature" else None
    spec = InputSpec.from_data_config(task.hparams.data_config)
    return Predictor(task.kind, list(task.class_names), [spec.in_chans], [spec.eval_transform()],
                     logit_scores(lambda batch: task(batch.to(target)), task.kind, temperature), [spec],
                     getattr(task, "thresholds", None))


def member_formats(ensemble) -> list[InputSpec]:
    return [InputSpec.from_data_config(m.hparams.data_config) for m in ensemble.members]


def member_inputs(ensemble) -> tuple[list[int], list]:
    """Per ensemble member: its input channels and its eval pipeline (each keeps its own preprocessing)."""
    specs = member_formats(ensemble)
    return [s.in_chans for s in specs], [s.eval_transform() for s in specs]


def ensemble_predictor(ensemble, calibration: str = "temperature") -> Predictor:
    """An `EnsembleTask`: probabilities averaged over its members (each at its own temperature with
    `calibration=temperature`) and their TTA views."""
    ensemble.to(device())
    in_chans, transforms = member_inputs(ensemble)
    return Predictor(ensemble.kind, list(ensemble.class_names), in_chans, transforms,
                     partial(ensemble.probabilities, calibration=calibration),
                     member_formats(ensemble), ensemble.thresholds)


def exported_predictor(path: Path | str, key: str = "ckpt_path", calibration: str = "temperature") -> Predictor:
    """A model written by export (`model.onnx`, `model.torchscript.pt`) with its `model.meta.json` (whose
    `temperature` divides the logits with `calibration=temperature`)."""
    model = load_exported(path, key)
    temperature = model.temperature if calibration == "temperature" else None
    return Predictor(model.task, model.class_names, [model.spec.in_chans], [model.transform()],
                     logit_scores(lambda batch: torch.from_numpy(model(batch)), model.task, temperature), [model.spec],
                     model.thresholds)


def load_predictor(model: CheckpointSpec) -> Predictor:
    """The predictor of what `ckpt_path` named: one checkpoint, an ensemble (or TTA), or an exported file."""
    if model.exported:
        return exported_predictor(model.paths[0], calibration=model.calibration)
    loaded = load_model(list(model.paths), model.tta)
    return task_predictor(loaded, model.calibration) if model.single else ensemble_predictor(loaded, model.calibration)


class PredictDataset(Dataset):
    """Each input (a file, or an image in memory) decoded once per channel count and prepared by every
    member's pipeline; an unreadable one yields no views and its reason."""

    def __init__(self, items: list, in_chans: list[int], transforms: list) -> None:
        self.items, self.in_chans, self.transforms = items, list(in_chans), list(transforms)

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int):
        try:
            decoded = {c: decode_input(self.items[index], c) for c in sorted(set(self.in_chans))}
        except (OSError, ValueError) as err:
            return (), index, str(err)
        return tuple(as_tensor(t(image=decoded[c])["image"]) for t, c in zip(self.transforms, self.in_chans)), index, ""


def collate(batch):
    """`(views, indices of readable inputs, [(index, reason) of unreadable ones])`."""
    good = [b for b in batch if b[0]]
    views = [torch.stack([b[0][k] for b in good]) for k in range(len(good[0][0]))] if good else []
    return views, [b[1] for b in good], [(b[1], b[2]) for b in batch if not b[0]]


def probabilities(predictor: Predictor, items: list, batch_size: int, num_workers: int):
    """Probabilities per readable input ({index: C}) and (index, reason) for the unreadable ones."""
    dataset = PredictDataset(items, predictor.in_chans, predictor.transforms)
    loader = DataLoader(dataset, batch_size=batch_size, num_workers=num_workers, collate_fn=collate)
    probs: dict[int, np.ndarray] = {}
    failed: list[tuple[int, str]] = []
    with torch.inference_mode():
        for views, indices, bad in loader:
            failed += bad
            if len(indices):
                probs.update(zip(indices, predictor.scores(views, None).cpu().numpy()))
    return probs, failed


def predict_mask(predictor: Predictor, item) -> tuple[np.ndarray, np.ndarray]:
    """One input's decoded image and its class-index mask at the image's own size."""
    decoded = {c: decode_input(item, c) for c in sorted(set(predictor.in_chans))}
    image = decoded[predictor.in_chans[0]]
    views = [as_tensor(t(image=decoded[c])["image"])[None] for t, c in zip(predictor.transforms, predictor.in_chans)]
    with torch.inference_mode():
        scores = predictor.scores(views, tuple(image.shape[:2]))
    return image, scores.argmax(dim=1)[0].cpu().numpy()


def predict_files(predictor: Predictor, paths: list[Path], run_dir: Path, output=None, top_k: int = 3,
                  batch_size: int = 64, num_workers: int = 0) -> dict:
    """The CSV (classification, default `<run_dir>/predictions.csv`) or masks (segmentation, default into
    `run_dir`) of `paths`; the summary for results.json."""
    if predictor.kind == "segmentation":
        return write_masks(lambda path: predict_mask(predictor, path), paths,
                           run_dir if output is None else Path(str(output)))
    csv_path = unused_output(output, run_dir / "predictions.csv")
    probs, failed = probabilities(predictor, paths, batch_size, num_workers)
    rows = predictor.rows([str(p) for p in paths], probs, failed, top_k)
    if predictor.kind == "multilabel":
        return write_multilabel_rows(csv_path, rows, predictor.class_names)
    return write_rows(csv_path, rows)


def predict_inputs(predictor: Predictor, items: list, names: list, top_k: int = 3, batch_size: int = 32):
    """`Run.predict` on `expand_inputs`'s items: records with the CSV's columns (a DataFrame with pandas),
    or one mask per input (None for an unreadable file)."""
    if predictor.kind == "segmentation":
        return masks_of(lambda item: predict_mask(predictor, item), items, names)
    probs, failed = probabilities(predictor, items, batch_size, 0)
    rows = predictor.rows(names, probs, failed, top_k)
    return as_table(rows, multilabel_columns(predictor.class_names) if predictor.kind == "multilabel" else None)


def predict_exported(model_path: Path | str, source: Path | str, output: Path | str, top_k: int = 3,
                     batch_size: int = 64, num_workers: int = 0) -> dict:
    """Predict with an exported model from Python: the CSV (or masks folder) at `output`."""
    output = Path(output).expanduser()
    paths = list_inputs(Path(source).expanduser())
    return predict_files(exported_predictor(model_path), paths, output.parent, output, top_k, batch_size, num_workers)
