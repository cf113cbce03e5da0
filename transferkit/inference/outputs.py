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


def prediction_rows(names: list, probs: dict[int, np.ndarray], failed: list[tuple[int, str]],
                    class_names: list[str], top_k: int) -> list[dict]:
    """One record per input with the CSV_COLUMNS: the top label and its probability, the `top_k` labels as
    `name:probability;...`, or the reason the input could not be read (`Run.predict` returns these)."""
    reasons = dict(failed)
    rows = []
    for i, name in enumerate(names):
        if i in reasons:
            rows.append({"path": name, "label": "", "probability": None, "top_k": "", "error": reasons[i]})
            continue
        p = probs[i]
        order = np.argsort(-p, kind="stable")[:top_k]
        top = ";".join(f"{class_names[j]}:{p[j]:.4f}" for j in order)
        rows.append({"path": name, "label": class_names[order[0]], "probability": float(p[order[0]]),
                     "top_k": top, "error": ""})
    return rows


def write_rows(path: Path, paths: list[Path], probs: dict[int, np.ndarray], failed: list[tuple[int, str]],
               class_names: list[str], top_k: int) -> int:
    """`path,label,probability,top_k,error` per image; returns how many images got a label."""
    rows = prediction_rows([str(p) for p in paths], probs, failed, class_names, top_k)
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(CSV_COLUMNS)
        for row in rows:
            probability = "" if row["probability"] is None else f"{row['probability']:.4f}"
            writer.writerow([row["path"], row["label"], probability, row["top_k"], row["error"]])
    return len(paths) - len(dict(failed))


def mask_at_size(logits: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Class ids `N x H x W` at `size` (the images' own): logits resized bilinearly, then argmax."""
    resized = F.interpolate(logits, size=tuple(size), mode="bilinear", align_corners=False)
    return resized.argmax(dim=1)
