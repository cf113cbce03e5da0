"""What a search leaves behind: trials.csv, the best trial as a recipe file, Optuna's matplotlib plots.

The search (`transferkit.search.tune`) decides what goes in them; these functions write them.
"""

from __future__ import annotations

import csv
import logging
import warnings
from pathlib import Path

from omegaconf import OmegaConf

log = logging.getLogger("transferkit")


def write_trials_csv(rows: list[dict], fields: list[str], path: Path) -> Path:
    """One row per trial (`transferkit.search.tune.trial_rows`), under the header `fields`."""
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)
    return path


def recipe_text(body: dict, header: list[str]) -> str:
    """A `# @package _global_` recipe file: the `header` lines as comments, then `body` as YAML."""
    return "\n".join(["# @package _global_", *(f"# {line}" for line in header), OmegaConf.to_yaml(body)])


def save_plots(study, run_dir: Path) -> dict[str, str | None]:
    """optimization_history.png and param_importances.png (Optuna's matplotlib backend, no plotly)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from optuna.exceptions import ExperimentalWarning
    from optuna.visualization.matplotlib import plot_optimization_history, plot_param_importances

    plots: dict[str, str | None] = {}
    complete = [t for t in study.trials if t.state.name == "COMPLETE"]
    for name, plot, needs in (("optimization_history", plot_optimization_history, 1),
                              ("param_importances", plot_param_importances, 2)):
        if len(complete) < needs:
            log.info("No %s plot: it needs %d complete trial%s, the study has %d.", name, needs,
                     "s" if needs > 1 else "", len(complete))
            plots[name] = None
            continue
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ExperimentalWarning)
            try:
                ax = plot(study)
            except (ValueError, RuntimeError) as err:  # e.g. importances when no parameter varied
                log.info("No %s plot: %s", name, str(err).splitlines()[0])
                plots[name] = None
                continue
        path = run_dir / f"{name}.png"
        ax.figure.set_size_inches(8, 5)
        ax.figure.tight_layout()
        ax.figure.savefig(path, dpi=100)
        plt.close(ax.figure)
        plots[name] = str(path)
    return plots
