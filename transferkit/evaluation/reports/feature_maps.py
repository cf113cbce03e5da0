"""Draw what a backbone sees: its first conv layer's filters and one image's feature maps per stage."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def filter_tiles(weight: np.ndarray) -> list[np.ndarray]:
    """One tile per output filter (C_out x C_in x k x k): RGB when C_in is 3, else the channel mean;
    each scaled to its own range so the pattern shows."""
    tiles = []
    for kernel in weight:
        tile = kernel.transpose(1, 2, 0) if kernel.shape[0] == 3 else kernel.mean(axis=0)
        low, high = float(tile.min()), float(tile.max())
        tiles.append((tile - low) / (high - low) if high > low else np.zeros_like(tile))
    return tiles


def strongest_channels(feature: np.ndarray, count: int) -> np.ndarray:
    """Indices of the `count` channels with the highest mean activation (C x H x W)."""
    return np.argsort(-feature.reshape(len(feature), -1).mean(axis=1), kind="stable")[:count]


def save_feature_figure(image: np.ndarray, weight: np.ndarray | None, stages: list[tuple[str, np.ndarray]],
                        path: Path, channels: int = 16, title: str = "") -> Path:
    """A figure: the input and the first-layer filters on top, then one row of maps per stage."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tiles = filter_tiles(weight) if weight is not None else []
    columns = max(channels, min(len(tiles), 32), 2)
    filter_rows = -(-len(tiles) // columns) if tiles else 0
    rows = 1 + filter_rows + len(stages)
    fig, axes = plt.subplots(rows, columns, figsize=(columns * 0.9, rows * 1.0 + 0.6), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    axes[0, 0].imshow(image, cmap="gray" if image.ndim == 2 else None)
    axes[0, 0].set_title("input", fontsize=7)
    for k, tile in enumerate(tiles):
        ax = axes[1 + k // columns, k % columns]
        ax.imshow(tile, cmap="gray" if tile.ndim == 2 else None, interpolation="nearest")
        if k == 0:
            ax.set_title(f"first conv: {len(tiles)} filters {weight.shape[2]}x{weight.shape[3]}", fontsize=7, loc="left")
    for r, (name, feature) in enumerate(stages):
        row = 1 + filter_rows + r
        for c, channel in enumerate(strongest_channels(feature, columns)):
            ax = axes[row, c]
            ax.imshow(feature[channel], cmap="viridis", interpolation="nearest")
            if c == 0:
                ax.set_title(f"{name}: {feature.shape[0]}x{feature.shape[1]}x{feature.shape[2]}, "
                             f"{min(columns, len(feature))} strongest channels", fontsize=7, loc="left")
    if title:
        fig.suptitle(title, fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
