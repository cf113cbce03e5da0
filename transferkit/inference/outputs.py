"""What predict gives: one record per image (classification: a row of predictions.csv, or of the table
`Run.predict` returns) or a mask per image (segmentation: `<stem>_mask.png` and `<stem>_overlay.png`,
or the arrays), the same whether the model is a checkpoint, an ensemble or an exported file."""

from __future__ import annotations

import csv
import logging
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from transferkit.data.decode import UnreadableImageError
from transferkit.data.masks import Colour, overlay, write_index_png
from transferkit.data.multilabel import LABEL_SEPARATOR

log = logging.getLogger("transferkit")

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
    `name:probability;...`, or the reason the input could not be read. Logs the unreadable ones."""
    reasons = dict(failed)
    for index, reason in failed:
        log.warning("skipped %s: %s", names[index], reason)
    top_k = max(1, min(int(top_k), len(class_names)))
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


def write_rows(path: Path, rows: list[dict]) -> dict:
    """predictions.csv (`path,label,probability,top_k,error` per image); the summary for results.json."""
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(CSV_COLUMNS)
        for row in rows:
            probability = "" if row["probability"] is None else f"{row['probability']:.4f}"
            writer.writerow([row["path"], row["label"], probability, row["top_k"], row["error"]])
    failed = sum(1 for row in rows if row["probability"] is None)
    log.info("Wrote %d predictions to %s", len(rows) - failed, path)
    return {"output": str(path), "predicted": len(rows) - failed, "failed": failed}


def multilabel_columns(class_names: list[str]) -> list[str]:
    """predictions.csv's columns for a multi-label model: the predicted set, then one probability per class."""
    return ["path", "labels", *(f"p_{name}" for name in class_names), "error"]


def multilabel_rows(names: list, probs: dict[int, np.ndarray], failed: list[tuple[int, str]],
                    class_names: list[str], thresholds: list[float] | None) -> list[dict]:
    """One record per input: `labels`, the classes at or above their threshold (`;`-joined, empty = none),
    and `p_<class>`, each class's sigmoid probability as a float (never rounded: ties would change AP)."""
    reasons = dict(failed)
    for index, reason in failed:
        log.warning("skipped %s: %s", names[index], reason)
    cut = np.asarray(thresholds if thresholds is not None else [0.5] * len(class_names), dtype=np.float64)
    rows = []
    for i, name in enumerate(names):
        if i in reasons:
            rows.append({"path": name, "labels": "", **{f"p_{c}": None for c in class_names}, "error": reasons[i]})
            continue
        p = np.asarray(probs[i], dtype=np.float64)
        chosen = LABEL_SEPARATOR.join(c for c, value, t in zip(class_names, p, cut) if value >= t)
        rows.append({"path": name, "labels": chosen, **{f"p_{c}": float(v) for c, v in zip(class_names, p)},
                     "error": ""})
    return rows


def write_multilabel_rows(path: Path, rows: list[dict], class_names: list[str]) -> dict:
    """predictions.csv of a multi-label model (`multilabel_columns`); probabilities written with `repr`
    (full float precision); the summary for results.json."""
    columns = multilabel_columns(class_names)
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(columns)
        for row in rows:
            writer.writerow(["" if row[c] is None else (repr(row[c]) if isinstance(row[c], float) else row[c])
                             for c in columns])
    failed = sum(1 for row in rows if row["error"])
    log.info("Wrote %d predictions to %s", len(rows) - failed, path)
    return {"output": str(path), "predicted": len(rows) - failed, "failed": failed}


def as_table(rows: list[dict], columns: list[str] | None = None):
    """A pandas DataFrame of `rows` when pandas is installed, else the list itself."""
    try:
        import pandas  # lazy: an optional dependency
    except ImportError:
        return rows
    return pandas.DataFrame(rows, columns=columns or CSV_COLUMNS)


def save_prediction_pngs(image: np.ndarray, mask: np.ndarray, directory: Path | str, stem: str,
                         palette: Sequence[Colour] | None = None) -> tuple[Path, Path]:
    """Write ``<stem>_mask.png`` (palette index PNG of class ids) and ``<stem>_overlay.png``."""
    directory = Path(directory)
    mask_path = write_index_png(mask, directory / f"{stem}_mask.png", palette)
    overlay_path = directory / f"{stem}_overlay.png"
    Image.fromarray(overlay(image, mask, palette)).save(overlay_path)
    return mask_path, overlay_path


MaskOf = Callable[[object], tuple[np.ndarray, np.ndarray]]  # input -> (decoded image, class-index mask)


def write_masks(mask_of: MaskOf, paths: list[Path], directory: Path) -> dict:
    """`<stem>_mask.png` and `<stem>_overlay.png` per image, at the image's own size (a repeated stem gets
    `_1`, `_2`, ...). Unreadable files are logged and skipped; the summary for results.json."""
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
    return {"written": written}


def masks_of(mask_of: MaskOf, items: list, names: list) -> list:
    """One class-index mask per input (None, with a warning, for an unreadable file)."""
    masks = []
    for item, name in zip(items, names):
        try:
            masks.append(mask_of(item)[1])
        except UnreadableImageError as error:
            log.warning("skipped %s: %s", name, error.reason)
            masks.append(None)
    return masks
