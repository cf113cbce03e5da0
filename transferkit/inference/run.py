"""The predict loop shared by checkpoints and exported models: a `Predictor` says how to prepare an
image and how to get logits; everything else (reading files, batching, CSV, masks) is one code path.
Imports neither Lightning nor timm."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader

from transferkit.inference.images import PredictDataset, as_tensor, collate, decode_input, list_inputs
from transferkit.inference.outputs import mask_at_size, unused_output, write_rows

log = logging.getLogger("transferkit")


@dataclass
class Predictor:
    """A model as predict sees it: `logits(prepared batch)` -> float32 CPU tensor."""

    task: str                      # classification | segmentation
    class_names: list[str]
    in_chans: int
    transform: Callable            # albumentations: uint8 H x W x C -> the model's input for one image
    logits: Callable[[torch.Tensor], torch.Tensor]


def exported_predictor(path: Path | str, key: str = "ckpt_path") -> Predictor:
    from transferkit.inference.exported import load_exported

    model = load_exported(path, key)
    return Predictor(model.task, model.class_names, model.spec.in_chans, model.transform(),
                     lambda batch: torch.from_numpy(model(batch)))


def predict_probabilities(predictor: Predictor, paths: list, batch_size: int, num_workers: int):
    """Softmax probabilities per readable image (a path, or an image in memory), plus (index, reason) for
    unreadable ones."""
    dataset = PredictDataset(paths, predictor.in_chans, predictor.transform)
    loader = DataLoader(dataset, batch_size=batch_size, num_workers=num_workers, collate_fn=collate)
    return collect_probabilities(loader, lambda images: torch.softmax(predictor.logits(images).float(), dim=-1))


def collect_probabilities(loader: DataLoader, probabilities: Callable[[object], torch.Tensor]):
    """Run `probabilities(inputs)` over a loader of `(inputs, indices, [(index, reason) unreadable])`
    batches: {index: probabilities} and the unreadable (index, reason) pairs."""
    probs: dict[int, np.ndarray] = {}
    failed: list[tuple[int, str]] = []
    with torch.inference_mode():
        for inputs, indices, bad in loader:
            failed += bad
            if len(indices):
                probs.update(zip(indices, probabilities(inputs).cpu().numpy()))
    return probs, failed


def predict_mask(predictor: Predictor, item) -> tuple[np.ndarray, np.ndarray]:
    """One input's decoded image and its class-index mask at the image's own size."""
    image = decode_input(item, predictor.in_chans)
    x = as_tensor(predictor.transform(image=image)["image"])[None]
    with torch.inference_mode():
        mask = mask_at_size(predictor.logits(x).float().cpu(), image.shape[:2])[0].numpy()
    return image, mask


def write_masks(predictor: Predictor, paths: list[Path], directory: Path) -> int:
    """For each image write `<stem>_mask.png` (palette index PNG) and `<stem>_overlay.png`, at the
    image's own size. Unreadable files are logged and skipped; returns how many were written."""
    return write_masks_of(lambda path: predict_mask(predictor, path), paths, directory)


def write_masks_of(mask_of: Callable[[Path], tuple], paths: list[Path], directory: Path) -> int:
    """`write_masks` for any `mask_of(path) -> (image, mask)` (one model, or an ensemble)."""
    from transferkit.data.decode import UnreadableImageError
    from transferkit.evaluation.reports.overlays import save_prediction_pngs

    seen: dict[str, int] = {}
    written = 0
    for path in map(Path, paths):
        try:
            image, mask = mask_of(path)
        except UnreadableImageError as error:
            log.warning("skipped %s: %s", path, error.reason)
            continue
        stem = path.stem if path.stem not in seen else f"{path.stem}_{seen[path.stem]}"
        seen[path.stem] = seen.get(path.stem, 0) + 1
        save_prediction_pngs(image, mask, directory, stem)
        written += 1
    log.info("Wrote %d masks and overlays to %s", written, directory)
    return written


def write_predictions(csv_path: Path, paths: list[Path], probs, failed, class_names: list[str], top_k: int) -> dict:
    """The predictions CSV from per-image probabilities; the summary for results.json."""
    top_k = max(1, min(int(top_k), len(class_names)))
    ok = write_rows(csv_path, paths, probs, failed, class_names, top_k)
    for index, reason in failed:
        log.warning("skipped %s: %s", paths[index], reason)
    log.info("Wrote %d predictions to %s", ok, csv_path)
    return {"output": str(csv_path), "predicted": ok, "failed": len(failed)}


def predict_files(predictor: Predictor, paths: list[Path], run_dir: Path, output=None, top_k: int = 3,
                  batch_size: int = 64, num_workers: int = 0) -> dict:
    """Predict `paths` (see `list_inputs`): the CSV (classification, default `<run_dir>/predictions.csv`)
    or masks (segmentation, default into `run_dir`). Returns a summary for results.json."""
    if predictor.task == "segmentation":
        written = write_masks(predictor, paths, run_dir if output is None else Path(str(output)))
        return {"written": written}
    csv_path = unused_output(output, run_dir / "predictions.csv")
    probs, failed = predict_probabilities(predictor, paths, batch_size, num_workers)
    return write_predictions(csv_path, paths, probs, failed, predictor.class_names, top_k)


def predict_exported(model_path: Path | str, source: Path | str, output: Path | str, top_k: int = 3,
                     batch_size: int = 64, num_workers: int = 0) -> dict:
    """Predict with an exported model from Python: the CSV (or masks folder) at `output`."""
    predictor = exported_predictor(model_path)
    paths = list_inputs(Path(source).expanduser())
    output = Path(output).expanduser()
    return predict_files(predictor, paths, output.parent, output, top_k, batch_size, num_workers)
