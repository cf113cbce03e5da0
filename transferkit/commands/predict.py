"""`python -m transferkit predict ckpt_path=... input=FILE_OR_FOLDER [output=preds.csv] [top_k=3] [tta=flip]`.

`ckpt_path` may be a list of checkpoints or a run directory (a cv run: its folds): an ensemble
whose averaged probabilities fill the same CSV columns as one checkpoint's.
"""

from __future__ import annotations

import csv
import logging
import time
from pathlib import Path

import numpy as np
import torch
from omegaconf import DictConfig
from torch.utils.data import DataLoader, Dataset

from transferkit.loading import checkpoint_paths, is_many, load_ensemble, require
from transferkit.rundir import create_run_dir, write_config, write_json
from transferkit.tasks.ensemble import EnsembleTask
from transferkit.tta import check_tta

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


def decode_input(item, in_chans: int) -> np.ndarray:
    """One input as a uint8 H x W x in_chans array: an image file (the decode path of fit), or an image
    already in memory (a Pillow image or a numpy array, from the Python API)."""
    from transferkit.data.decode import image_of_pixels, load_image

    return load_image(item, in_chans=in_chans) if isinstance(item, (str, Path)) else image_of_pixels(item, in_chans)


class PredictDataset(Dataset):
    """Decoded images (files, or images in memory), each prepared by every member's eval pipeline;
    unreadable ones yield no views and are reported."""

    def __init__(self, paths: list, in_chans: list[int], transforms: list) -> None:
        self.paths, self.in_chans, self.transforms = paths, list(in_chans), list(transforms)

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int):
        try:
            decoded = {c: decode_input(self.paths[index], c) for c in sorted(set(self.in_chans))}
        except (OSError, ValueError) as err:
            return (), index, str(err)
        return tuple(t(image=decoded[c])["image"] for t, c in zip(self.transforms, self.in_chans)), index, ""


def collate(batch):
    good = [b for b in batch if b[0]]
    views = [torch.stack([b[0][k] for b in good]) for k in range(len(good[0][0]))] if good else []
    return views, [b[1] for b in good], [(b[1], b[2]) for b in batch if not b[0]]


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


def as_ensemble(model) -> EnsembleTask:
    """An `EnsembleTask` (a single task becomes an ensemble of one, without TTA)."""
    return model if isinstance(model, EnsembleTask) else EnsembleTask([model]).eval()


def member_inputs(ensemble: EnsembleTask) -> tuple[list[int], list]:
    """Per member: its input channels and its eval pipeline (each keeps its own preprocessing)."""
    members = list(ensemble.members)
    return [int(m.hparams.data_config["in_chans"]) for m in members], [eval_transform(m) for m in members]


def predict_probabilities(model, paths: list, batch_size: int, num_workers: int):
    """Softmax probabilities (averaged over members and TTA views) per readable image (a path or an
    image in memory), plus (index, reason) for unreadable ones."""
    ensemble = as_ensemble(model)
    in_chans, transforms = member_inputs(ensemble)
    loader = DataLoader(PredictDataset(paths, in_chans, transforms), batch_size=batch_size,
                        num_workers=num_workers, collate_fn=collate)
    probs: dict[int, np.ndarray] = {}
    failed: list[tuple[int, str]] = []
    with torch.inference_mode():
        for views, indices, bad in loader:
            failed += bad
            if len(indices):
                probs.update(zip(indices, ensemble.probabilities(views).cpu().numpy()))
    return probs, failed


def predict_mask(ensemble: EnsembleTask, in_chans: list[int], transforms: list, item) -> tuple[np.ndarray, np.ndarray]:
    """One input's decoded image and its class-index mask at the image's own size: each member's
    per-pixel probabilities are resized to it and averaged."""
    decoded = {c: decode_input(item, c) for c in sorted(set(in_chans))}
    image = decoded[in_chans[0]]
    views = [t(image=decoded[c])["image"][None] for t, c in zip(transforms, in_chans)]
    with torch.inference_mode():
        mask = ensemble.probabilities(views, size=image.shape[:2]).argmax(dim=1)[0].cpu().numpy()
    return image, mask


def write_masks(model, paths: list[Path], directory: Path) -> int:
    """For each image write ``<stem>_mask.png`` (palette index PNG) and ``<stem>_overlay.png``.

    Masks have the image's own size (see `predict_mask`). Unreadable files are logged and skipped;
    returns how many images were written.
    """
    from transferkit.data.decode import UnreadableImageError
    from transferkit.reports.seg_grid import save_prediction_pngs

    ensemble = as_ensemble(model)
    in_chans, transforms = member_inputs(ensemble)
    seen: dict[str, int] = {}
    written = 0
    for path in map(Path, paths):
        try:
            image, mask = predict_mask(ensemble, in_chans, transforms, path)
        except UnreadableImageError as error:
            log.warning("skipped %s: %s", path, error.reason)
            continue
        stem = path.stem if path.stem not in seen else f"{path.stem}_{seen[path.stem]}"
        seen[path.stem] = seen.get(path.stem, 0) + 1
        save_prediction_pngs(image, mask, directory, stem)
        written += 1
    log.info("Wrote %d masks and overlays to %s", written, directory)
    return written


COLUMNS = ("path", "label", "probability", "top_k", "error")


def prediction_rows(names: list, probs, failed, class_names, top_k: int) -> list[dict]:
    """One record per input with the CSV's COLUMNS: the top label and its probability, the `top_k`
    labels as `name:probability;...`, or the reason an input could not be read."""
    reasons = dict(failed)
    rows = []
    for i, name in enumerate(names):
        if i in reasons:
            rows.append({"path": name, "label": "", "probability": None, "top_k": "", "error": reasons[i]})
            continue
        p = probs[i]
        order = np.argsort(-p)[:top_k]
        top = ";".join(f"{class_names[j]}:{p[j]:.4f}" for j in order)
        rows.append({"path": name, "label": class_names[order[0]], "probability": float(p[order[0]]),
                     "top_k": top, "error": ""})
    return rows


def write_rows(path: Path, paths: list[Path], probs, failed, class_names, top_k: int) -> int:
    rows = prediction_rows([str(p) for p in paths], probs, failed, class_names, top_k)
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(COLUMNS)
        for row in rows:
            probability = "" if row["probability"] is None else f"{row['probability']:.4f}"
            writer.writerow([row["path"], row["label"], probability, row["top_k"], row["error"]])
    return len(paths) - len(dict(failed))


def run(cfg: DictConfig) -> dict:
    start = time.time()
    tta = check_tta(cfg.get("tta"))
    ckpts = checkpoint_paths(cfg.ckpt_path)
    source = require(cfg.input, "input", "an image file or a folder of images")
    ensemble, _ = load_ensemble(ckpts, tta)
    ensemble.to("cuda" if torch.cuda.is_available() else "cpu")
    paths = list_inputs(source)
    run_dir = create_run_dir(cfg.run_dir)
    write_config(cfg, run_dir)
    log.info("Run directory: %s", run_dir)
    checkpoint = str(ckpts[0]) if len(ckpts) == 1 and not is_many(cfg.ckpt_path) else [str(p) for p in ckpts]
    results = {"command": "predict", "checkpoint": checkpoint, "tta": tta, "input": str(source)}
    if ensemble.segmentation:
        written = write_masks(ensemble, paths, run_dir if cfg.output is None else Path(str(cfg.output)))
        results.update({"written": written, "run_dir": str(run_dir)})
    else:
        csv_path = output_path(cfg, run_dir)
        probs, failed = predict_probabilities(ensemble, paths, cfg.data.batch_size, 0)
        top_k = max(1, min(int(cfg.top_k), len(ensemble.class_names)))
        ok = write_rows(csv_path, paths, probs, failed, ensemble.class_names, top_k)
        for index, reason in failed:
            log.warning("skipped %s: %s", paths[index], reason)
        log.info("Wrote %d predictions to %s", ok, csv_path)
        results.update({"output": str(csv_path), "predicted": ok, "failed": len(failed), "run_dir": str(run_dir)})
    results["wall_seconds"] = round(time.time() - start, 2)
    write_json(results, run_dir / "results.json")
    return results
