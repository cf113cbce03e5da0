"""The run report's pictures: confusion matrix, per-class IoU bars, training curves, top losses.

Drawn with matplotlib's object API (no pyplot, no global state) and saved without a timestamp or
version in the PNG, so the same inputs give the same bytes.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

PNG_METADATA = {"Software": None}  # no matplotlib version in the file: a rebuild is byte-identical
ANNOTATE_UP_TO = 25  # classes; bigger matrices are colour only
LABEL_UP_TO = 60     # classes; bigger matrices have no tick labels


def label_inches(labels: Sequence[str], fontsize: float = 8) -> float:
    """Room a column of tick labels needs (fixed margins instead of tight_layout, which draws twice)."""
    longest = max((len(str(label)) for label in labels), default=1)
    return min(0.15 + 0.6 * fontsize / 72 * longest, 2.5)


def save(figure: Figure, path: Path, dpi: int = 100) -> Path:
    figure.savefig(path, dpi=dpi, metadata=PNG_METADATA)
    return path


def confusion_figure(confmat: np.ndarray, class_names: Sequence[str], path: Path, title: str) -> Path:
    """Counts, coloured by the fraction of each true class (row) so small classes show too."""
    n = len(class_names)
    rows = confmat.sum(axis=1, keepdims=True)
    fractions = np.divide(confmat, rows, out=np.zeros(confmat.shape, dtype=np.float64), where=rows > 0)
    side = min(max(3.5, 0.4 * n), 14.0)  # inches of the matrix itself
    rotate = n > 10 or max((len(str(c)) for c in class_names), default=1) > 3
    labels = label_inches(class_names) if n <= LABEL_UP_TO else 0.1
    left, bottom, top, right = labels + 0.45, (labels if rotate else 0.25) + 0.45, 0.45, 1.3
    width, height = left + side + right, bottom + side + top
    figure = Figure(figsize=(width, height))
    axes = figure.add_axes((left / width, bottom / height, side / width, side / height))
    image = axes.imshow(fractions, cmap="Blues", vmin=0.0, vmax=1.0, interpolation="nearest")
    bar = figure.add_axes(((left + side + 0.2) / width, bottom / height, 0.2 / width, side / height))
    figure.colorbar(image, cax=bar, label="fraction of the true class")
    if n <= LABEL_UP_TO:
        axes.set_xticks(range(n), [str(c) for c in class_names], rotation=90 if rotate else 0, fontsize=8)
        axes.set_yticks(range(n), [str(c) for c in class_names], fontsize=8)
    if n <= ANNOTATE_UP_TO:
        for (i, j), count in np.ndenumerate(confmat):
            if count:
                colour = "white" if fractions[i, j] > 0.5 else "black"
                axes.text(j, i, str(count), ha="center", va="center", fontsize=8, color=colour)
    axes.set_xlabel("predicted")
    axes.set_ylabel("true")
    axes.set_title(title, fontsize=10)
    return save(figure, path)


def iou_figure(rows: Sequence[dict], path: Path, title: str) -> Path:
    """Horizontal bars, one per class; classes absent from truth and prediction are marked n/a."""
    names = [r["class"] for r in rows]
    values = [r["iou"] if r["iou"] is not None else 0.0 for r in rows]
    left, height = label_inches(names) + 0.2, max(2.0, 0.35 * len(rows) + 1.2)
    width = left + 5.0
    figure = Figure(figsize=(width, height))
    axes = figure.add_axes((left / width, 0.6 / height, 4.6 / width, (height - 1.0) / height))
    positions = np.arange(len(rows))
    axes.barh(positions, values, color="tab:blue")
    for y, row in zip(positions, rows):
        text = "n/a" if row["iou"] is None else f"{row['iou']:.3f}"
        axes.text(min(values[y], 0.85) + 0.01, y, text, va="center", fontsize=8)
    axes.set_yticks(positions, names, fontsize=8)
    axes.invert_yaxis()
    axes.set_xlim(0, 1)
    axes.set_xlabel("IoU (test)")
    axes.set_title(title, fontsize=10)
    return save(figure, path)


def curves_figure(curves: dict[str, dict[str, list[tuple[int, float]]]], path: Path) -> Path:
    """One panel per quantity (`loss`, `acc`, ...), a line per stage (`train`, `val`); epochs from 1,
    as the console counts them (Lightning's metrics.csv counts from 0)."""
    panels = list(curves)
    figure = Figure(figsize=(4.2 * len(panels), 3.2))
    for k, quantity in enumerate(panels):
        axes = figure.add_subplot(1, len(panels), k + 1)
        for stage, points in curves[quantity].items():
            epochs, values = zip(*points)
            axes.plot([e + 1 for e in epochs], values, marker="o", markersize=3, label=stage)
        epochs = sorted({e + 1 for points in curves[quantity].values() for e, _ in points})
        if len(epochs) <= 12:
            axes.set_xticks(epochs)
        else:
            axes.xaxis.set_major_locator(MaxNLocator(integer=True))
        axes.set_xlabel("epoch")
        axes.set_title(quantity)
        axes.grid(alpha=0.3)
        axes.legend(fontsize=8)
    figure.subplots_adjust(left=0.75 / figure.get_figwidth(), right=0.98,
                           bottom=0.17, top=0.9, wspace=0.3)
    return save(figure, path)


def reliability_figure(panels: Sequence[tuple[str, list[dict]]], path: Path) -> Path:
    """Reliability diagrams side by side: per confidence bin, accuracy (bars) against mean confidence
    (the diagonal is perfect calibration); `panels` are (title, `evaluation.calibration.reliability_bins`)."""
    figure = Figure(figsize=(3.6 * len(panels), 3.5))
    for k, (title, bins) in enumerate(panels):
        axes = figure.add_subplot(1, len(panels), k + 1)
        used = [b for b in bins if b["count"]]
        width = bins[0]["high"] - bins[0]["low"] if bins else 1.0
        axes.bar([b["low"] for b in used], [b["accuracy"] for b in used], width=width, align="edge",
                 color="tab:blue", edgecolor="white", label="accuracy")
        axes.bar([b["low"] for b in used], [abs(b["confidence"] - b["accuracy"]) for b in used], width=width,
                 bottom=[min(b["accuracy"], b["confidence"]) for b in used], align="edge", fill=False,
                 hatch="///", edgecolor="tab:red", linewidth=0.5, label="gap to confidence")
        axes.plot([0, 1], [0, 1], color="grey", linestyle="--", linewidth=1)
        axes.set_xlim(0, 1)
        axes.set_ylim(0, 1)
        axes.set_xlabel("confidence (top class)")
        axes.set_ylabel("accuracy" if k == 0 else "")
        axes.set_title(title, fontsize=9)
        axes.legend(fontsize=7, loc="upper left")
    figure.subplots_adjust(left=0.5 / figure.get_figwidth(), right=0.98, bottom=0.15, top=0.9, wspace=0.25)
    return save(figure, path)


def top_losses_figure(images: np.ndarray, captions: Sequence[str], wrong: Sequence[bool], path: Path,
                      title: str, columns: int = 4) -> Path:
    """A grid of ``uint8 H x W x 3`` images, each under its two-line caption (red: wrong, green: right).

    Each image is scaled to its cell here and placed as raw pixels (`Figure.figimage`): no axes per
    image, which cost about 25 ms each to build and draw."""
    cell, caption, header, dpi = 190, 34, 30, 100  # pixels
    count = max(len(images), 1)
    columns = min(columns, count)
    rows = -(-count // columns)
    width, height = columns * cell, rows * (cell + caption) + header
    figure = Figure(figsize=(width / dpi, height / dpi), dpi=dpi)
    figure.text(0.5, 1 - header / 2 / height, title, ha="center", va="center", fontsize=9)
    side = cell - 12
    for k, image in enumerate(images):
        row, col = divmod(k, columns)
        top = height - header - row * (cell + caption)
        pixels = fit_in_square(image, side)
        figure.figimage(pixels, xo=col * cell + 6 + (side - pixels.shape[1]) // 2,
                        yo=top - caption - side + (side - pixels.shape[0]) // 2, origin="upper")
        figure.text((col * cell + cell / 2) / width, (top - caption / 2) / height, captions[k], ha="center",
                    va="center", fontsize=8, color="tab:red" if wrong[k] else "tab:green")
    if not len(images):
        figure.text(0.5, 0.4, "no test images", ha="center", va="center")
    return save(figure, path, dpi=dpi)


def fit_in_square(image: np.ndarray, side: int) -> np.ndarray:
    """`image` scaled to fit a `side`-pixel square, aspect kept: blocky when enlarged (pixels stay
    visible, as the model saw them), area-averaged when shrunk."""
    from PIL import Image

    height, width = image.shape[:2]
    scale = side / max(height, width)
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    resample = Image.Resampling.NEAREST if scale >= 1 else Image.Resampling.BOX
    return np.asarray(Image.fromarray(np.ascontiguousarray(image)).resize(size, resample))
