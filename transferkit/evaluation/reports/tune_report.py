"""What a search leaves behind: trials.csv, the best trial as a recipe file, Optuna's matplotlib plots."""

from __future__ import annotations

import csv
import logging
import warnings
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from transferkit.config.files import leaves
from transferkit.search.space import format_value, group_names, is_search_key, override_key

log = logging.getLogger("transferkit")


def write_trials_csv(trials: list, params: list[str], path: Path) -> Path:
    """One row per trial: number, state, value, its sampled parameters, run directory, seconds."""
    fields = ["number", "state", "value", *params, "pruned_at_epoch", "run_dir", "seconds", "error"]
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=fields)
        writer.writeheader()
        for t in trials:
            seconds = (t.datetime_complete - t.datetime_start).total_seconds() if t.datetime_complete else None
            writer.writerow({"number": t.number, "state": t.state.name, "value": t.value,
                             **{p: format_value(t.params[p]) if p in t.params else "" for p in params},
                             "pruned_at_epoch": t.user_attrs.get("pruned_at_epoch", ""),
                             "run_dir": t.user_attrs.get("run_dir", ""),
                             "seconds": f"{seconds:.1f}" if seconds is not None else "",
                             "error": t.user_attrs.get("error", "")})
    return path


def recipe_text(base_recipe: dict | None, overrides: list[str], composed: DictConfig, header: list[str]) -> str:
    """A `# @package _global_` recipe that composes to `composed`: the base recipe's group choices
    with the overrides' group choices on top, and every value the base recipe or an override set."""
    base = dict(base_recipe or {})
    defaults = list(base.pop("defaults", None) or [])
    groups = set(group_names())
    keys = [key for key, _ in leaves(base)]
    for item in overrides:
        key, value = override_key(item), item.split("=", 1)[1] if "=" in item else None
        if is_search_key(key) or key == "recipe" or item.startswith("~"):
            continue
        if key in groups:
            defaults = [d for d in defaults if not (isinstance(d, dict) and f"override /{key}" in d)]
            defaults.append({f"override /{key}": value})
        else:
            keys.append(key)
    node = OmegaConf.create({})
    for key in dict.fromkeys(keys):
        OmegaConf.update(node, key, OmegaConf.select(composed, key), force_add=True)
    values = OmegaConf.to_container(node, resolve=True)
    body = {"defaults": defaults, **values} if defaults else values
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
