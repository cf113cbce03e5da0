"""User-facing errors and the one name-lookup helper used by every builder."""

from __future__ import annotations

import difflib
import inspect
from collections.abc import Iterable, Mapping
from typing import TypeVar

T = TypeVar("T")

EXPORT_EXTRA_HINT = 'pip install ".[export]"'  # what ONNX export and ONNX Runtime need


class ConfigError(ValueError):
    """A config value is wrong; the message names the key and says what to do.

    Example:
        >>> import transferkit
        >>> transferkit.fit(trainer={"max_epochz": 1})  # doctest: +SKIP
        Traceback (most recent call last):
        transferkit.errors.ConfigError: trainer.max_epochz is not an option: ... Did you mean 'max_epochs'?
    """


def did_you_mean(name: str, choices: Iterable[str]) -> str:
    """Return ' Did you mean X?' for the closest choice, or ''."""
    close = difflib.get_close_matches(name, list(choices), n=1)
    return f" Did you mean {close[0]!r}?" if close else ""


def lookup(table: Mapping[str, T], name: str, key: str) -> T:
    """Look `name` up in `table`, failing with a message that names the config `key`."""
    if name not in table:
        raise ConfigError(
            f"{key}={name!r} is unknown; use one of {sorted(table)}.{did_you_mean(str(name), table)}"
        )
    return table[name]


def construct(cls, kwargs: dict, group: str):
    """Call `cls(**kwargs)`, turning an unknown keyword into an error that names the config key."""
    params = inspect.signature(cls).parameters
    for key in kwargs:
        if key not in params:
            raise ConfigError(f"{group}.{key} is not an option; "
                              f"valid keys: {sorted(p for p in params if p != 'self')}."
                              f"{did_you_mean(key, params)}")
    return cls(**kwargs)
