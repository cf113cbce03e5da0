"""The LR range test's record and its plot (loss vs base LR), for `lr-find` and `optimizer.lr=find`."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path


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
