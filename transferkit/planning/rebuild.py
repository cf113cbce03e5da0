"""The config of the run behind a checkpoint (or a list of them, or a run directory), with this
command line's overrides on top: how `test`, `advise`, `show-augs` and `show-features` reuse a
run's data, model and recipe."""

from __future__ import annotations

import logging
from pathlib import Path

from omegaconf import DictConfig, OmegaConf, open_dict

log = logging.getLogger("transferkit")


def checkpoint_run_config(ckpt_path) -> Path:
    """Where the config of the run behind `ckpt_path` lies: beside a checkpoint (<run>/checkpoints/x.ckpt),
    in a run directory (a cv or fit run), or for a list, that of its first entry."""
    from transferkit.tasks.loading import is_many  # lazy: the CLI imports this module; torch is not needed for --help

    first = (list(ckpt_path) or [None])[0] if is_many(ckpt_path) else ckpt_path
    path = Path(str(first)).expanduser().resolve()
    return (path if path.is_dir() else path.parent.parent) / "config.yaml"


def config_of_checkpoint_run(cfg: DictConfig, overrides: list[str]) -> DictConfig:
    """Start from the config saved beside a checkpoint (its run's data, model, recipe),
    then apply this command line's `key=value` overrides on top. `ckpt_path` may also be a
    list (an ensemble: the first member's run) or a run directory (a cv run: its own config)."""
    saved = checkpoint_run_config(cfg.ckpt_path)
    if not saved.is_file():
        return cfg
    base = OmegaConf.load(saved)
    explicit = [o.lstrip("+") for o in overrides
                if "." in o.split("=", 1)[0] or o.split("=", 1)[0] in cfg and not isinstance(cfg.get(o.split("=", 1)[0]), DictConfig)]
    merged = OmegaConf.merge(base, OmegaConf.from_dotlist(explicit))
    with open_dict(merged):
        merged.run_dir = cfg.run_dir
        merged.ckpt_path = cfg.ckpt_path
        for key in cfg:  # keys added to conf/ after that run (e.g. export options) get their defaults
            if key not in merged:
                merged[key] = cfg[key]
    log.info("Using the config of the checkpoint's run: %s", saved)
    return merged
