"""LR figures and tables: the range test's record and plot (loss vs base LR, for `lr-find` and
`optimizer.lr=find`), and a planned schedule's curves (`plot-lr`)."""

from __future__ import annotations

import csv
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # a type only: the LR finder and fit import this module without the schedule's stack
    from transferkit.evaluation.lr_schedule import LRSchedule


@dataclass
class LRSearch:
    """What the range test measured: the base LR of each step, the smoothed loss, the suggestion."""

    lrs: list[float]
    losses: list[float]
    suggestion: float | None
    settings: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {"suggested_lr": self.suggestion, "steps": len(self.lrs), **self.settings}


def plot_lr_search(search: LRSearch, path: Path, title: str) -> Path:
    """Loss vs base LR (log scale), the suggestion marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot(search.lrs, search.losses)
    ax.set_xscale("log")
    if search.suggestion is not None:
        at = min(range(len(search.lrs)), key=lambda i: abs(search.lrs[i] - search.suggestion))
        ax.plot(search.lrs[at], search.losses[at], "o", color="red", markersize=8,
                label=f"suggested {search.suggestion:.3g}")
        ax.legend()
    ax.set_xlabel("base learning rate (head group; other groups x their lr_scale)")
    ax.set_ylabel("smoothed training loss")
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def write_lr_search_csv(search: LRSearch, path: Path) -> Path:
    """lr_find.csv: each step's base LR and smoothed loss."""
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["step", "lr", "smoothed_loss"])
        writer.writerows([i, f"{lr:.6g}", f"{loss:.6g}"] for i, (lr, loss) in enumerate(zip(search.lrs, search.losses)))
    return path


def plot_lr_schedule(schedule: LRSchedule, path: Path) -> Path:
    """Every param group's LR over the run's epochs (dashed: the groups without weight decay)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    steps = schedule.steps_per_epoch
    epochs = [i / steps for i in range(len(schedule.curves[0]))]
    for curve, name in zip(schedule.curves, schedule.names):
        ax.plot(epochs, curve, label=name, linestyle="--" if name.endswith("_no_decay") else "-")
    ax.set_xlabel("epoch")
    ax.set_ylabel("learning rate")
    ax.set_title(schedule.title)
    ax.legend(fontsize="small", ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def write_lr_schedule_csv(schedule: LRSchedule, path: Path) -> Path:
    """lr_schedule.csv: one row per optimizer step, one column per param group."""
    steps = schedule.steps_per_epoch
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["step", "epoch", *schedule.names])
        for i, row in enumerate(zip(*schedule.curves)):
            writer.writerow([i, f"{i / steps:.4f}", *(f"{lr:.6g}" for lr in row)])
    return path
