"""The `tune.space` config: which config keys a search samples, and the overrides a sample becomes.

The space nests like the config. A node with `choices` is categorical; on a group name
(`finetune`, `augment`) its choices are that group's conf/ options. A node with `low`/`high` is a
range: integers when both bounds are integers, `log: true` for a log scale, an optional `step`.
Other keys of a node are nested parameters (`finetune.trainable_stages` beside `finetune.choices`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from transferkit.config.files import config_keys, group_options, package_dir
from transferkit.errors import ConfigError, did_you_mean

SPEC_KEYS = ("choices", "low", "high", "log", "step")
MISSING = object()


@dataclass(frozen=True)
class Param:
    """One searched config key: `path` is its override key (`optimizer.lr`, or a group: `finetune`)."""

    path: str
    choices: tuple | None = None
    low: float | int | None = None
    high: float | int | None = None
    log: bool = False
    step: float | int | None = None
    group: bool = False

    @property
    def is_int(self) -> bool:
        return self.choices is None and all(isinstance(v, int) and not isinstance(v, bool)
                                            for v in (self.low, self.high))

    def sample(self, trial) -> Any:
        """Ask an Optuna trial for this parameter's value."""
        if self.choices is not None:
            return trial.suggest_categorical(self.path, list(self.choices))
        if self.is_int:
            return trial.suggest_int(self.path, self.low, self.high, step=self.step or 1, log=self.log)
        return trial.suggest_float(self.path, float(self.low), float(self.high), step=self.step, log=self.log)

    def override(self, value: Any) -> str:
        return f"{self.path}={format_value(value)}"


def format_value(value: Any) -> str:
    """A value as a Hydra override spells it (floats keep every digit)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    return repr(value) if isinstance(value, float) else str(value)


def group_names() -> list[str]:
    return sorted(p.name for p in package_dir("conf").iterdir() if p.is_dir())


def parse_space(space: dict | None, config: dict) -> list[Param]:
    """The parameters of `tune.space`, each checked against the composed config (a plain dict) it samples."""
    node = space
    if not node:
        raise ConfigError("tune.space is empty: give at least one parameter, e.g. "
                          "tune.space.optimizer.lr={low:1e-4,high:0.1,log:true}.")
    params = list(walk(node, ""))
    searched_groups = {p.path for p in params if p.group}
    for param in params:
        check_param(param, config, searched_groups)
    return params


def walk(node: Any, prefix: str):
    if node is None:  # tune.space.<key>=null: not searched
        return
    where = f"tune.space{'.' + prefix if prefix else ''}"
    if not isinstance(node, dict):
        raise ConfigError(f"{where}={node!r} is not a search range; write {{low: .., high: ..}} or "
                          "{choices: [..]} (see conf/tune/default.yaml).")
    if any(k in node for k in SPEC_KEYS):
        yield make_param(prefix, node, where)
    for key, child in node.items():
        if key in SPEC_KEYS:
            continue
        if not isinstance(child, dict) and child is not None and any(k in node for k in SPEC_KEYS):
            raise ConfigError(f"{where}.{key} is not a search option; a parameter takes {list(SPEC_KEYS)}."
                              f"{did_you_mean(key, SPEC_KEYS)}")
        yield from walk(child, f"{prefix}.{key}" if prefix else key)


def make_param(path: str, spec: dict, where: str) -> Param:
    if not path:
        raise ConfigError("tune.space itself cannot be a parameter; nest it under a config key.")
    if "choices" in spec:
        choices = spec["choices"]
        extra = sorted(k for k in ("low", "high", "log", "step") if k in spec)
        if not isinstance(choices, list) or not choices or extra:
            raise ConfigError(f"{where}.choices must be a non-empty list (and no {extra or 'low/high'} beside it), "
                              f"e.g. {where}.choices=[a,b].")
        return Param(path, choices=tuple(choices), group="." not in path and path in group_names())
    low, high = spec.get("low"), spec.get("high")
    if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in (low, high)) or not low < high:
        raise ConfigError(f"{where} needs numbers low < high; got low={low!r}, high={high!r}.")
    if spec.get("log") and low <= 0:
        raise ConfigError(f"{where}.log=true needs low > 0; got low={low!r}.")
    step = spec.get("step")
    if step is not None and (spec.get("log") or not step > 0):
        raise ConfigError(f"{where}.step={step!r} must be > 0 and cannot go with log=true.")
    return Param(path, low=low, high=high, log=bool(spec.get("log")), step=step)


def check_param(param: Param, config: dict, searched_groups: set[str]) -> None:
    """The key must exist in the config (or in every option of a searched group)."""
    where = f"tune.space.{param.path}"
    if param.group:
        options = group_options(param.path)
        for choice in param.choices:
            if str(choice) not in options:
                raise ConfigError(f"{where}.choices has {choice!r}, which is not a {param.path} option; use "
                                  f"{options}.{did_you_mean(str(choice), options)}")
        return
    group, _, rest = param.path.partition(".")
    if select(config, param.path) is not MISSING:
        return
    if group in searched_groups and rest in config_keys(group):
        return
    parent = param.path.rsplit(".", 1)[0] if "." in param.path else ""
    node = select(config, parent) if parent else config
    keys = list(node.keys()) if isinstance(node, dict) else []
    name = param.path.rsplit(".", 1)[-1]
    raise ConfigError(f"{where}: the config has no key {param.path!r}, so a search cannot set it"
                      f"{'; ' + parent + ' has ' + str(sorted(map(str, keys))) if keys else ''}."
                      f"{did_you_mean(name, map(str, keys))}")


def select(config: dict, key: str, default=MISSING):
    """The value at a dotted key of a nested dict, or `default` where there is none."""
    node = config
    for part in key.split("."):
        if not isinstance(node, dict) or part not in node:
            return default
        node = node[part]
    return node


def sample(trial, params: list[Param]) -> dict[str, Any]:
    return {p.path: p.sample(trial) for p in params}


def trial_overrides(base: list[str], params: list[Param], values: dict[str, Any]) -> list[str]:
    """The command line of one trial: the search's own overrides, minus the keys it samples and its
    `tune`/`run_dir`/`resume` keys, then the sampled values (groups first, as Hydra applies them)."""
    searched = {p.path for p in params}
    kept = [item for item in base if override_key(item) not in searched and not is_search_key(override_key(item))]
    ordered = sorted(params, key=lambda p: not p.group)
    return kept + [p.override(values[p.path]) for p in ordered if p.path in values]


def override_key(item: str) -> str:
    return item.split("=", 1)[0].lstrip("+~")


def is_search_key(key: str) -> bool:
    return key in ("tune", "run_dir", "resume") or key.startswith("tune.")
