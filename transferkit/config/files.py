"""Where `conf/` and `recipes/` live, and reading one group option without Hydra."""

from __future__ import annotations

import inspect

from pathlib import Path

from omegaconf import OmegaConf

from transferkit.errors import ConfigError, did_you_mean


def package_dir(name: str) -> Path:
    """`conf/` or `recipes/`: inside the installed package, else at the top of the source tree."""
    here = Path(__file__).resolve().parent.parent
    for candidate in (here / name, here.parent / name):
        if candidate.is_dir():
            return candidate
    raise FileNotFoundError(f"transferkit's {name}/ folder is missing; reinstall with `pip install .`.")


def recipe_names() -> list[str]:
    return sorted(p.stem for p in package_dir("recipes").glob("*.yaml"))


def recipe_path(name: str) -> Path:
    path = package_dir("recipes") / f"{name}.yaml"
    if not path.is_file():
        raise ConfigError(f"recipe={name!r} is unknown; use one of {recipe_names()}.{did_you_mean(name, recipe_names())}")
    return path


def is_recipe_file(value: str) -> bool:
    """`recipe=` names a file (`my.yaml`, `path/to/recipe`) rather than an option of `recipes/`."""
    return value.endswith((".yaml", ".yml")) or "/" in value or "\\" in value


def load_recipe_file(value: str) -> tuple[Path, dict]:
    """`recipe=path/to/my.yaml`: the file's absolute path and its content (a recipe like those in recipes/)."""
    path = Path(value).expanduser().resolve()
    if not path.is_file():
        raise ConfigError(f"recipe={value!r}: there is no such file ({path}); give the path of a recipe .yaml "
                          f"file or one of the recipes {recipe_names()}.")
    try:
        node = OmegaConf.to_container(OmegaConf.load(path))
    except Exception as err:  # noqa: BLE001 - YAML syntax errors come in several types
        raise ConfigError(f"recipe={value!r}: {path} is not valid YAML ({str(err).splitlines()[0]}).") from None
    if not isinstance(node, dict):
        raise ConfigError(f"recipe={value!r}: {path} must hold a mapping of config keys, like recipes/*.yaml.")
    return path, node


def group_options(group: str) -> list[str]:
    """The option names of a config group (`model` -> ['auto', 'charnet', 'resnet18', ...])."""
    return sorted(p.stem for p in (package_dir("conf") / group).glob("*.yaml"))


def load_group_option(group: str, option: str) -> dict:
    """One `conf/<group>/<option>.yaml` as a plain dict (its own `defaults` list merged in)."""
    path = package_dir("conf") / group / f"{option}.yaml"
    if not path.is_file():
        raise ConfigError(f"{group}={option!r} is unknown; use one of {group_options(group)}."
                          f"{did_you_mean(option, group_options(group))}")
    node = OmegaConf.to_container(OmegaConf.load(path))
    merged: dict = {}
    for parent in node.pop("defaults", []) or []:
        if isinstance(parent, str) and parent != "_self_":
            merged.update(load_group_option(group, parent))
    return {**merged, **node}


def config_keys(group: str) -> set[str]:
    """Every key any option of `group` sets (e.g. the Trainer flags the `trainer` group spells out)."""
    keys: set[str] = set()
    for option in group_options(group):
        keys |= set(load_group_option(group, option))
    return keys


def leaves(node: dict, prefix: str = ""):
    """(dotted key, value) of every leaf of a nested dict (a list is one leaf)."""
    for key, value in node.items():
        if isinstance(value, dict):
            yield from leaves(value, f"{prefix}{key}.")
        else:
            yield f"{prefix}{key}", value


def trainer_flags() -> set[str]:
    """Every keyword Lightning's Trainer takes (any of them can be set as `trainer.<flag>=`)."""
    import pytorch_lightning as pl  # lazy: Lightning only for a flag the trainer group does not spell out

    return {n for n in inspect.signature(pl.Trainer.__init__).parameters if n != "self"}
