"""What predict writes: one CSV row per image (classification) or a mask and an overlay PNG per
image (segmentation), the same whether the model is a checkpoint or an exported file."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

CSV_COLUMNS = ["path", "label", "probability", "top_k", "error"]


def unused_output(output: str | Path | None, default: Path) -> Path:
    """The file to write: `default` when `output` is unset; an existing `output` is refused."""
    if output is None:
        return default
    path = Path(str(output)).expanduser()
    if path.exists():
        raise FileExistsError(f"output={str(path)!r} already exists; choose a new file name "
                              "(transferkit never overwrites your files).")
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


def write_rows(path: Path, paths: list[Path], probs: dict[int, np.ndarray], failed: list[tuple[int, str]],
               class_names: list[str], top_k: int) -> int:
    """`path,label,probability,top_k,error` per image; returns how many images got a label."""
    reasons = dict(failed)
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(CSV_COLUMNS)
        for i, image_path in enumerate(paths):
            if i in reasons:
                writer.writerow([str(image_path), "", "", "", reasons[i]])
                continue
            p = probs[i]
            order = np.argsort(-p, kind="stable")[:top_k]
            top = ";".join(f"{class_names[j]}:{p[j]:.4f}" for j in order)
            writer.writerow([str(image_path), class_names[order[0]], f"{p[order[0]]:.4f}", top, ""])
    return len(paths) - len(reasons)


def mask_at_size(logits: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Class ids `N x H x W` at `size` (the images' own): logits resized bilinearly, then argmax."""
    resized = F.interpolate(logits, size=tuple(size), mode="bilinear", align_corners=False)
    return resized.argmax(dim=1)
