"""Predict with an ensemble of checkpoints and/or test-time augmentation: each member prepares the
image its own way (size, channels, mean, std), `EnsembleTask.probabilities` averages members and TTA
views. The files read and written are those of one model's predict (`transferkit.inference`)."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from transferkit.inference.images import as_tensor, decode_input
from transferkit.inference.outputs import unused_output
from transferkit.inference.run import collect_probabilities, write_masks_of, write_predictions
from transferkit.inference.spec import InputSpec
from transferkit.tasks.ensemble import EnsembleTask

log = logging.getLogger("transferkit")


class MemberViewsDataset(Dataset):
    """Decoded images, each prepared by every member's eval pipeline; unreadable files yield no views
    and are reported."""

    def __init__(self, paths: list, in_chans: list[int], transforms: list) -> None:
        self.paths, self.in_chans, self.transforms = paths, list(in_chans), list(transforms)

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int):
        try:
            decoded = {c: decode_input(self.paths[index], c) for c in sorted(set(self.in_chans))}
        except (OSError, ValueError) as err:
            return (), index, str(err)
        return tuple(as_tensor(t(image=decoded[c])["image"]) for t, c in zip(self.transforms, self.in_chans)), index, ""


def collate(batch):
    good = [b for b in batch if b[0]]
    views = [torch.stack([b[0][k] for b in good]) for k in range(len(good[0][0]))] if good else []
    return views, [b[1] for b in good], [(b[1], b[2]) for b in batch if not b[0]]


def member_inputs(ensemble: EnsembleTask) -> tuple[list[int], list]:
    """Per member: its input channels and its eval pipeline (each keeps its own preprocessing)."""
    specs = [InputSpec.from_data_config(m.hparams.data_config) for m in ensemble.members]
    return [s.in_chans for s in specs], [s.eval_transform() for s in specs]


def ensemble_probabilities(ensemble: EnsembleTask, paths: list[Path], batch_size: int, num_workers: int):
    """Softmax probabilities (averaged over members and TTA views) per readable image, plus (index,
    reason) for unreadable ones."""
    in_chans, transforms = member_inputs(ensemble)
    loader = DataLoader(MemberViewsDataset(paths, in_chans, transforms), batch_size=batch_size,
                        num_workers=num_workers, collate_fn=collate)
    return collect_probabilities(loader, ensemble.probabilities)


def ensemble_mask(ensemble: EnsembleTask, in_chans: list[int], transforms: list, item) -> tuple[np.ndarray, np.ndarray]:
    """One input's decoded image and its class-index mask at the image's own size: each member's
    per-pixel probabilities are resized to it and averaged."""
    decoded = {c: decode_input(item, c) for c in sorted(set(in_chans))}
    image = decoded[in_chans[0]]
    views = [as_tensor(t(image=decoded[c])["image"])[None] for t, c in zip(transforms, in_chans)]
    with torch.inference_mode():
        mask = ensemble.probabilities(views, size=image.shape[:2]).argmax(dim=1)[0].cpu().numpy()
    return image, mask


def write_ensemble_masks(ensemble: EnsembleTask, paths: list[Path], directory: Path) -> int:
    """`<stem>_mask.png` and `<stem>_overlay.png` per image, at the image's own size (`ensemble_mask`)."""
    in_chans, transforms = member_inputs(ensemble)
    return write_masks_of(lambda path: ensemble_mask(ensemble, in_chans, transforms, path), paths, directory)


def predict_ensemble(ensemble: EnsembleTask, paths: list[Path], run_dir: Path, output=None, top_k: int = 3,
                     batch_size: int = 64, num_workers: int = 0) -> dict:
    """Like `inference.run.predict_files` for an ensemble: the CSV or the masks; a summary dict."""
    if ensemble.segmentation:
        return {"written": write_ensemble_masks(ensemble, paths, run_dir if output is None else Path(str(output)))}
    csv_path = unused_output(output, run_dir / "predictions.csv")
    probs, failed = ensemble_probabilities(ensemble, paths, batch_size, num_workers)
    return write_predictions(csv_path, paths, probs, failed, ensemble.class_names, top_k)
