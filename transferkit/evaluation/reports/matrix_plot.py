"""The size x similarity matrix with the four quadrants and a data set marked (`advice.png`)."""

from __future__ import annotations

from pathlib import Path

from transferkit.evaluation.transferability import QUADRANTS, Advice


def plot_matrix(advice: Advice, path: Path, name: str = "dataset") -> Path:
    """The size x similarity matrix with the four recipes and this dataset marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    size_t, sim_t = advice.size_threshold, advice.similarity_threshold
    x = max(advice.images_per_class, 1.0)
    lo, hi = min(x, size_t) / 10, max(x, size_t) * 10
    fig, ax = plt.subplots(figsize=(6, 5))
    ax.set_xscale("log")
    ax.set_xlim(lo, hi)
    ax.set_ylim(min(-0.05, advice.similarity - 0.05), 1.05)
    ax.axvline(size_t, color="grey", linestyle="--")
    ax.axhline(sim_t, color="grey", linestyle="--")
    for quadrant in QUADRANTS:
        qx = (lo * size_t) ** 0.5 if quadrant.startswith("small") else (size_t * hi) ** 0.5
        qy = (1 + sim_t) / 2 if quadrant.endswith("_similar") else sim_t / 2
        weight = "bold" if quadrant == advice.quadrant else "normal"
        ax.text(qx, qy, quadrant, ha="center", va="center", fontweight=weight, alpha=0.7)
    ax.plot([x], [advice.similarity], marker="*", markersize=18, color="crimson")
    ax.annotate(name, (x, advice.similarity), textcoords="offset points", xytext=(8, 8))
    ax.set_xlabel("images per class (log)")
    ax.set_ylabel("similarity (chance-normalised k-NN accuracy)")
    ax.set_title(f"{name}: {advice.quadrant}")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
