"""`python -m transferkit predict ckpt_path=... input=FILE_OR_FOLDER [output=preds.csv] [top_k=3]`."""

from __future__ import annotations

import csv
import logging
import time
from pathlib import Path

import numpy as np
import torch
from omegaconf import DictConfig
from torch.utils.data import DataLoader, Dataset

from transferkit.loading import load_task, require
from transferkit.rundir import create_run_dir, write_config, write_json

log = logging.getLogger("transferkit")


def list_inputs(path: Path) -> list[Path]:
    """One image file, or every image under a folder (hidden files and junk skipped)."""
    from transferkit.data.walk import Findings, is_image_file, walk_images

    if path.is_file():
        if not is_image_file(path.name):
            raise ValueError(f"input={str(path)!r} is not an image file (png, jpg, webp, bmp, tif, gif).")
        return [path]
    findings = Findings()
    images, _ = walk_images(path, findings)
    for note in findings.link_notes(path):
        log.warning("input: %s", note)
    if not images:
        raise FileNotFoundError(f"input={str(path)!r} holds no image files.")
    return images


class PredictDataset(Dataset):
    """Decoded + eval-transformed images; unreadable files yield `None` and are reported."""

    def __init__(self, paths: list[Path], in_chans: int, transform) -> None:
        self.paths, self.in_chans, self.transform = paths, in_chans, transform

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int):
        from transferkit.data.decode import load_image

        try:
            image = load_image(self.paths[index], in_chans=self.in_chans)
        except (OSError, ValueError) as err:
            return torch.zeros(0), index, str(err)
        return self.transform(image=image)["image"], index, ""


def collate(batch):
    good = [b for b in batch if b[0].numel()]
    images = torch.stack([b[0] for b in good]) if good else torch.zeros(0)
    return images, [b[1] for b in good], [(b[1], b[2]) for b in batch if not b[0].numel()]


def output_path(cfg: DictConfig, run_dir: Path) -> Path:
    if cfg.output is None:
        return run_dir / "predictions.csv"
    path = Path(str(cfg.output)).expanduser()
    if path.exists():
        raise FileExistsError(f"output={str(path)!r} already exists; choose a new file name "
                              "(transferkit never overwrites your files).")
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


def eval_transform(task):
    """The checkpoint's eval preprocessing (resize + normalise as in validation), for every task kind."""
    from transferkit.data.transforms import build_transforms

    data = task.hparams.data_config
    return build_transforms(data.get("augment", "none"), train=False, image_size=data["image_size"],
                            mean=data["mean"], std=data["std"], in_chans=data["in_chans"],
                            interpolation=data.get("interpolation", "bilinear"))


def predict_probabilities(task, paths: list[Path], batch_size: int, num_workers: int):
    """Softmax probabilities per readable image, plus (index, reason) for unreadable ones."""
    data = task.hparams.data_config
    loader = DataLoader(PredictDataset(paths, data["in_chans"], eval_transform(task)), batch_size=batch_size,
                        num_workers=num_workers, collate_fn=collate)
    probs: dict[int, np.ndarray] = {}
    failed: list[tuple[int, str]] = []
    device = next(task.parameters()).device
    with torch.inference_mode():
        for images, indices, bad in loader:
            failed += bad
            if len(indices):
                out = task.predict_step(images.to(device), 0).cpu().numpy()
                probs.update(zip(indices, out))
    return probs, failed


def write_masks(task, paths: list[Path], directory: Path) -> int:
    """For each image write ``<stem>_mask.png`` (palette index PNG) and ``<stem>_overlay.png``.

    Masks have the image's own size. Unreadable files are logged and skipped; returns how many
    images were written.
    """
    from transferkit.data.decode import UnreadableImageError, load_image
    from transferkit.reports.seg_grid import save_prediction_pngs

    transform, in_chans = eval_transform(task), int(task.hparams.data_config["in_chans"])
    seen: dict[str, int] = {}
    written = 0
    for path in map(Path, paths):
        try:
            image = load_image(path, in_chans=in_chans)
        except UnreadableImageError as error:
            log.warning("skipped %s: %s", path, error.reason)
            continue
        stem = path.stem if path.stem not in seen else f"{path.stem}_{seen[path.stem]}"
        seen[path.stem] = seen.get(path.stem, 0) + 1
        x = transform(image=image)["image"][None]
        mask = task.predict_mask(x, image.shape[:2])[0].cpu().numpy()
        save_prediction_pngs(image, mask, directory, stem)
        written += 1
    log.info("Wrote %d masks and overlays to %s", written, directory)
    return written


def write_rows(path: Path, paths: list[Path], probs, failed, class_names, top_k: int) -> int:
    reasons = dict(failed)
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["path", "label", "probability", "top_k", "error"])
        for i, image_path in enumerate(paths):
            if i in reasons:
                writer.writerow([str(image_path), "", "", "", reasons[i]])
                continue
            p = probs[i]
            order = np.argsort(-p)[:top_k]
            top = ";".join(f"{class_names[j]}:{p[j]:.4f}" for j in order)
            writer.writerow([str(image_path), class_names[order[0]], f"{p[order[0]]:.4f}", top, ""])
    return len(paths) - len(reasons)


def run(cfg: DictConfig) -> dict:
    start = time.time()
    ckpt = require(cfg.ckpt_path, "ckpt_path", "a checkpoint written by fit")
    source = require(cfg.input, "input", "an image file or a folder of images")
    task = load_task(ckpt)
    task.to("cuda" if torch.cuda.is_available() else "cpu")
    paths = list_inputs(source)
    run_dir = create_run_dir(cfg.run_dir)
    write_config(cfg, run_dir)
    log.info("Run directory: %s", run_dir)
    if type(task).__name__ == "SegmentationTask":
        written = write_masks(task, paths, run_dir if cfg.output is None else Path(str(cfg.output)))
        results = {"command": "predict", "checkpoint": str(ckpt), "input": str(source),
                   "written": written, "run_dir": str(run_dir)}
    else:
        csv_path = output_path(cfg, run_dir)
        probs, failed = predict_probabilities(task, paths, cfg.data.batch_size, 0)
        top_k = max(1, min(int(cfg.top_k), len(task.class_names)))
        ok = write_rows(csv_path, paths, probs, failed, task.class_names, top_k)
        for index, reason in failed:
            log.warning("skipped %s: %s", paths[index], reason)
        log.info("Wrote %d predictions to %s", ok, csv_path)
        results = {"command": "predict", "checkpoint": str(ckpt), "input": str(source),
                   "output": str(csv_path), "predicted": ok, "failed": len(failed),
                   "run_dir": str(run_dir)}
    results["wall_seconds"] = round(time.time() - start, 2)
    write_json(results, run_dir / "results.json")
    return results
