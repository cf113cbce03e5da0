"""`python -m transferkit <command> key=value ...`: compose the Hydra config and run a command.

This is the only module that uses Hydra. Recipes in `recipes/` are registered as the
`recipe` group, so `recipe=small_similar` selects `recipes/small_similar.yaml`.
"""

from __future__ import annotations

import importlib
import logging
import os
import re
import sys
from pathlib import Path

from omegaconf import DictConfig, OmegaConf, open_dict

from transferkit.config_files import config_keys, package_dir, recipe_names

log = logging.getLogger("transferkit")

COMMANDS: dict[str, str] = {
    "fit": "transferkit.commands.fit",
    "test": "transferkit.commands.test",
    "predict": "transferkit.commands.predict",
    "pretrain": "transferkit.commands.pretrain",
    "advise": "transferkit.commands.advise",
    "show-augs": "transferkit.commands.show_augs",
    "plot-lr": "transferkit.commands.plot_lr",
    "report": "transferkit.commands.report",
}
USAGE = (
    "usage: python -m transferkit <command> [key=value ...]\n"
    f"commands: {', '.join(COMMANDS)}\n"
    "examples:\n"
    "  python -m transferkit fit recipe=small_similar\n"
    "  python -m transferkit fit recipe=small_similar data.root=/path/to/images trainer.max_epochs=5\n"
    "  python -m transferkit predict ckpt_path=outputs/.../checkpoints/best.ckpt input=/path/to/images\n"
    "See README.md for the config keys."
)


class UsageError(ValueError):
    """The command line itself is wrong (unknown command, malformed override)."""


def register_recipes() -> None:
    """Expose every `recipes/*.yaml` as an option of the `recipe` group."""
    from hydra.core.config_store import ConfigStore

    store = ConfigStore.instance()
    for path in sorted(package_dir("recipes").glob("*.yaml")):
        store.store(group="recipe", name=path.stem, node=OmegaConf.load(path), package="_global_")


def expand_trainer_overrides(overrides: list[str]) -> list[str]:
    """Let any Lightning Trainer flag be set as `trainer.<flag>=...` without Hydra's `+` prefix."""
    from transferkit.builders import trainer_flags

    known, flags = config_keys("trainer"), trainer_flags()
    expanded = []
    for item in overrides:
        key = item.split("=", 1)[0]
        if key.startswith("trainer.") and key.count(".") == 1:
            flag = key.split(".", 1)[1]
            if flag not in known and flag in flags:
                item = "+" + item
        expanded.append(item)
    return expanded


def compose_config(overrides: list[str]) -> DictConfig:
    """Compose `conf/config.yaml` with the recipe and the command-line overrides."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    for item in overrides:
        if "=" not in item:
            raise UsageError(f"{item!r} is not a key=value override (e.g. trainer.max_epochs=5).")
    register_recipes()
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(package_dir("conf")), version_base="1.3"):
        cfg = compose("config", overrides=expand_trainer_overrides(overrides))
    GlobalHydra.instance().clear()
    recipe = [o.split("=", 1)[1] for o in overrides if o.split("=", 1)[0].lstrip("+") == "recipe"]
    with open_dict(cfg):
        cfg.recipe = recipe[-1] if recipe else None  # recorded in config.yaml and results.json
    return cfg


def config_of_checkpoint_run(cfg: DictConfig, overrides: list[str]) -> DictConfig:
    """Start from the config saved beside a checkpoint (its run's data, model, recipe),
    then apply this command line's `key=value` overrides on top."""
    saved = Path(str(cfg.ckpt_path)).expanduser().resolve().parent.parent / "config.yaml"
    if not saved.is_file():
        return cfg
    base = OmegaConf.load(saved)
    explicit = [o.lstrip("+") for o in overrides
                if "." in o.split("=", 1)[0] or o.split("=", 1)[0] in cfg and not isinstance(cfg.get(o.split("=", 1)[0]), DictConfig)]
    merged = OmegaConf.merge(base, OmegaConf.from_dotlist(explicit))
    with open_dict(merged):
        merged.run_dir = cfg.run_dir
        merged.ckpt_path = cfg.ckpt_path
    log.info("Using the config of the checkpoint's run: %s", saved)
    return merged


def configure_logging(debug: bool) -> None:
    os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")  # albumentations must not phone home
    logging.basicConfig(level=logging.DEBUG if debug else logging.INFO, format="%(message)s")


def explain_config_error(err: Exception) -> str:
    """One line from Hydra/OmegaConf's composition error, with the valid recipes when relevant."""
    message = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    cause = err.__cause__ or err.__context__
    if cause is not None and str(cause).strip():
        message += f" ({str(cause).strip().splitlines()[0]})"
    missing = re.search(r"Could not find '(\w+)/([^']+)'", message)
    if missing and missing.group(1) in ("model", "recipe") or missing is None and "recipe" in message:
        from transferkit.config_files import group_options
        from transferkit.errors import did_you_mean

        group, option = missing.groups() if missing else ("recipe", "")
        options = recipe_names() if group == "recipe" else group_options(group)
        message += f" Available {group} options: {options}.{did_you_mean(option, options)}"
    return message


def run(argv: list[str]) -> dict:
    """Run one command; returns the command's result dict (used by tests)."""
    if not argv or argv[0] in ("-h", "--help", "help"):
        raise UsageError(USAGE)
    command, overrides = argv[0], argv[1:]
    if command not in COMMANDS:
        from transferkit.errors import did_you_mean

        raise UsageError(f"unknown command {command!r}.{did_you_mean(command, COMMANDS)}\n{USAGE}")
    cfg = compose_config(overrides)
    if command in ("test", "advise", "show-augs") and cfg.ckpt_path:
        cfg = config_of_checkpoint_run(cfg, overrides)
    if cfg.get("resume"):
        if command != "fit":
            raise UsageError(f"resume={cfg.resume} continues a fit run: python -m transferkit fit resume=...")
        from transferkit.commands.resuming import config_of_resumed_run

        cfg = config_of_resumed_run(cfg, overrides)
    module = importlib.import_module(COMMANDS[command])
    from transferkit.console import quiet_console

    with quiet_console(bool(cfg.debug)):
        return module.run(cfg)


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = any(a in ("debug=true", "debug=True") for a in argv) or os.environ.get("TRANSFERKIT_DEBUG") == "1"
    configure_logging(debug)
    try:
        run(argv)
    except UsageError as err:
        sys.stderr.write(f"{err}\n")
        raise SystemExit(2) from None
    except Exception as err:  # noqa: BLE001 - one clear line for users, traceback on request
        from transferkit.run_guards import RunStopped

        if isinstance(err, RunStopped):  # interrupted (130/143, with the resume command) or diverged (3)
            sys.stderr.write(f"transferkit: {err.status}: {err}\n")
            raise SystemExit(err.exit_code) from None
        if debug:
            raise
        from hydra.errors import HydraException
        from omegaconf.errors import OmegaConfBaseException

        config_error = isinstance(err, (HydraException, OmegaConfBaseException))
        text = explain_config_error(err) if config_error else f"{type(err).__name__}: {err}"
        sys.stderr.write(f"transferkit: error: {text}\n(add debug=true for the full traceback)\n")
        raise SystemExit(2 if config_error else 1) from None
