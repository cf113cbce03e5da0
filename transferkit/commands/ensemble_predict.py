"""Predict with an ensemble of checkpoints and/or test-time augmentation: each member prepares the
image its own way (size, channels, mean, std), `EnsembleTask.probabilities` averages members and TTA
views. The files read and written are those of one model's predict (`transferkit.inference`)."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from transferkit.inference.images import as_tensor
from transferkit.inference.outputs import unused_output, write_rows
from transferkit.inference.spec import InputSpec
from transferkit.tasks.ensemble import EnsembleTask

log = logging.getLogger("transferkit")


class MemberViewsDataset(Dataset):
    """Decoded images, each prepared by every member's eval pipeline; unreadable files yield no views
    and are reported."""

    def __init__(self, paths: list[Path], in_chans: list[int], transforms: list) -> None:
        self.paths, self.in_chans, self.transforms = paths, list(in_chans), list(transforms)

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int):
        from transferkit.data.decode import load_image

        try:
            decoded = {c: load_image(self.paths[index], in_chans=c) for c in sorted(set(self.in_chans))}
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
    probs: dict[int, np.ndarray] = {}
    failed: list[tuple[int, str]] = []
    with torch.inference_mode():
        for views, indices, bad in loader:
            failed += bad
            if len(indices):
                probs.update(zip(indices, ensemble.probabilities(views).cpu().numpy()))
    return probs, failed


def write_ensemble_masks(ensemble: EnsembleTask, paths: list[Path], directory: Path) -> int:
    """`<stem>_mask.png` and `<stem>_overlay.png` per image, at the image's own size: each member's
    per-pixel probabilities are resized to it and averaged."""
    from transferkit.data.decode import UnreadableImageError, load_image
    from transferkit.reports.overlays import save_prediction_pngs

    in_chans, transforms = member_inputs(ensemble)
    seen: dict[str, int] = {}
    written = 0
    for path in map(Path, paths):
        try:
            decoded = {c: load_image(path, in_chans=c) for c in sorted(set(in_chans))}
        except UnreadableImageError as error:
            log.warning("skipped %s: %s", path, error.reason)
            continue
        image = decoded[in_chans[0]]
        stem = path.stem if path.stem not in seen else f"{path.stem}_{seen[path.stem]}"
        seen[path.stem] = seen.get(path.stem, 0) + 1
        views = [as_tensor(t(image=decoded[c])["image"])[None] for t, c in zip(transforms, in_chans)]
        with torch.inference_mode():
            mask = ensemble.probabilities(views, size=image.shape[:2]).argmax(dim=1)[0].cpu().numpy()
        save_prediction_pngs(image, mask, directory, stem)
        written += 1
    log.info("Wrote %d masks and overlays to %s", written, directory)
    return written


def predict_ensemble(ensemble: EnsembleTask, paths: list[Path], run_dir: Path, output=None, top_k: int = 3,
                     batch_size: int = 64, num_workers: int = 0) -> dict:
    """Like `inference.run.predict_files` for an ensemble: the CSV or the masks; a summary dict."""
    if ensemble.segmentation:
        return {"written": write_ensemble_masks(ensemble, paths, run_dir if output is None else Path(str(output)))}
    csv_path = unused_output(output, run_dir / "predictions.csv")
    probs, failed = ensemble_probabilities(ensemble, paths, batch_size, num_workers)
    top_k = max(1, min(int(top_k), len(ensemble.class_names)))
    ok = write_rows(csv_path, paths, probs, failed, ensemble.class_names, top_k)
    for index, reason in failed:
        log.warning("skipped %s: %s", paths[index], reason)
    log.info("Wrote %d predictions to %s", ok, csv_path)
    return {"output": str(csv_path), "predicted": ok, "failed": len(failed)}
