"""`python -m transferkit tune recipe=... tune.n_trials=20`: an Optuna search over `tune.space`.

Each trial is a normal fit run in `<tune dir>/trials/<n>/`, composed through the CLI from this command
line plus the sampled values, planned and trained here; the search itself (study, pruning, trials.csv,
best_recipe.yaml) is `transferkit.search.tune`. `tune resume=<tune dir>` (or `resume=last`) continues an
interrupted search.
"""

from __future__ import annotations

from collections.abc import Callable

from omegaconf import DictConfig, OmegaConf

from transferkit.planning.plan import plan_run
from transferkit.planning.resume import config_of_resumed_search
from transferkit.search.tune import run_search
from transferkit.training.session import train_and_test

Compose = Callable[[list[str]], DictConfig]  # cli.compose_config


def run(cfg: DictConfig, compose: Compose) -> dict:
    """`compose` is cli.compose_config: every trial's config is composed by the CLI layer."""
    cfg, tune_dir = config_of_resumed_search(cfg) if cfg.get("resume") else (cfg, None)

    def run_trial(overrides: list[str], callbacks: list) -> dict:
        spec, datamodule = plan_run(compose(overrides), "fit")
        results, *_ = train_and_test(spec, datamodule, callbacks=callbacks)
        return results

    def composed(overrides: list[str]) -> dict:
        return OmegaConf.to_container(compose(overrides), resolve=True)

    return run_search(OmegaConf.to_container(cfg, resolve=True), tune_dir, run_trial, composed)
