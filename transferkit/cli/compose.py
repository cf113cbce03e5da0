"""Compose the Hydra config: `conf/config.yaml`, a recipe (a name in `recipes/` or a file) and the
command line's `key=value` overrides, with bad keys and values told in one line."""

from __future__ import annotations

import functools
import hashlib

from omegaconf import DictConfig, OmegaConf, open_dict

from transferkit.cli.overrides import plain_value
from transferkit.config.explain import flat_values, unknown_key_message, wrong_types
from transferkit.config.files import config_keys, is_recipe_file, load_recipe_file, package_dir
from transferkit.errors import ConfigError
from transferkit.config.files import trainer_flags


class UsageError(ValueError):
    """The command line itself is wrong (unknown command, malformed override)."""


@functools.lru_cache(maxsize=1)
def register_recipes() -> None:
    """Expose every `recipes/*.yaml` as an option of the `recipe` group (once a process: Hydra's
    ConfigStore keeps them)."""
    from hydra.core.config_store import ConfigStore

    store = ConfigStore.instance()
    for path in sorted(package_dir("recipes").glob("*.yaml")):
        store.store(group="recipe", name=path.stem, node=OmegaConf.load(path), package="_global_")


def expand_trainer_overrides(overrides: list[str]) -> list[str]:
    """Let any Lightning Trainer flag be set as `trainer.<flag>=...` without Hydra's `+` prefix."""
    known, flags = config_keys("trainer"), None
    expanded = []
    for item in overrides:
        key = item.split("=", 1)[0]
        if key.startswith("trainer.") and key.count(".") == 1 and key.split(".", 1)[1] not in known:
            if flags is None:  # imports Lightning: only for a flag the trainer group does not spell out

                flags = trainer_flags()
            if key.split(".", 1)[1] in flags:
                item = "+" + item
        expanded.append(item)
    return expanded


def compose_config(overrides: list[str]) -> DictConfig:
    """Compose `conf/config.yaml` with the recipe and the command-line overrides."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.errors import ConfigCompositionException

    given = list(overrides)
    for item in overrides:
        if "=" not in item:
            raise UsageError(f"{item!r} is not a key=value override (e.g. trainer.max_epochs=5).")
    register_recipes()
    overrides, recipe = register_recipe_file(overrides)
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(package_dir("conf")), version_base="1.3"):
            cfg = compose("config", overrides=expand_trainer_overrides(overrides))
    except ConfigCompositionException as err:
        message = unknown_key_message(err, given, compose_config)
        if message is None:
            raise
        raise ConfigError(message) from None
    finally:
        GlobalHydra.instance().clear()
    keys = [o.split("=", 1)[0].lstrip("+~") for o in given]
    groups = [key != "recipe" and (package_dir("conf") / key).is_dir() for key in keys]  # model=..., finetune=...
    if not all(groups):  # values from the command line or a recipe: checked against the groups' defaults
        problems = wrong_types(cfg, group_defaults(tuple(o for o, group in zip(given, groups) if group)))
        if problems:
            raise ConfigError(" ".join(problems))
    with open_dict(cfg):
        cfg.recipe = recipe  # recorded in config.yaml and results.json
    return cfg


@functools.lru_cache(maxsize=16)
def group_defaults(choices: tuple[str, ...]) -> dict:
    """What the group choices alone (`model=resnet50`, ...) compose to, as {dotted key: value}."""
    return flat_values(compose_config(list(choices)))


def register_recipe_file(overrides: list[str]) -> tuple[list[str], str | None]:
    """The recipe the overrides choose (a name, or a file's absolute path); `recipe=path/to/my.yaml`
    becomes an option of the `recipe` group, and its override names that option."""
    from hydra.core.config_store import ConfigStore

    chosen = [plain_value(o.split("=", 1)[1], parse_value) for o in overrides if o.split("=", 1)[0].lstrip("+") == "recipe"]
    if not chosen or not is_recipe_file(chosen[-1]):
        return overrides, chosen[-1] if chosen else None
    try:
        path, node = load_recipe_file(chosen[-1])
    except ConfigError as err:
        raise UsageError(str(err)) from None
    name = "file-" + hashlib.sha1(str(path).encode()).hexdigest()[:12]
    ConfigStore.instance().store(group="recipe", name=name, node=OmegaConf.create(node), package="_global_")
    kept = [o for o in overrides if o.split("=", 1)[0].lstrip("+") != "recipe"]
    return [*kept, f"recipe={name}"], str(path)


def parse_value(text: str):
    """The value Hydra's override grammar reads from `text` (the part after `key=`)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    return OverridesParser.create().parse_override(f"key={text}").value()
