"""Python values as command-line override text (`key=<text>`), for the Python API.

The grammar is Hydra's; its parser is passed in (`cli.parse_value`), since only cli.py imports Hydra.
Each value is written bare when the grammar reads it back unchanged, else quoted, and then checked.
"""

from __future__ import annotations

import numbers
import os
import re
from collections.abc import Callable, Mapping

from transferkit.errors import ConfigError

Parse = Callable[[str], object]


def override_text(value, key: str, parse: Parse) -> str:
    """`value` (None, bool, int, float, str, path, or a list or dict of those) as override text that `parse`
    reads back as exactly `value`: `None` -> `null`, `"a,b"` -> `'a,b'`, `[0, 0]` -> `[0,0]`.

    Raises:
        ConfigError: a value of another type, or a string the grammar cannot hold.

    Example:
        >>> from transferkit.cli.app import parse_value
        >>> override_text("my images, 2024", "data.root", parse_value)
        "'my images, 2024'"
    """
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, numbers.Integral):
        return str(int(value))
    if isinstance(value, numbers.Real):
        return repr(float(value))
    if isinstance(value, os.PathLike):
        value = os.fspath(value)
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(override_text(v, key, parse) for v in value) + "]"
    if isinstance(value, Mapping):
        return "{" + ",".join(f"{k}:{override_text(v, key, parse)}" for k, v in value.items()) + "}"
    if not isinstance(value, str):
        raise ConfigError(f"{key}={value!r}: a {type(value).__name__} cannot be a config value; pass None, a "
                          "bool, a number, a string, a path, or a list or dict of those.")
    for text in (value, quoted(value)):
        try:
            if parse(text) == value:
                return text
        except Exception:  # noqa: BLE001 - the grammar refused this spelling; try the next
            continue
    raise ConfigError(f"{key}={value!r} cannot be written as a config value (Hydra's override grammar); "
                      "avoid ${...} and unbalanced quotes in it.")


def quoted(text: str) -> str:
    """`text` in single quotes; its quotes, and the backslashes before a quote or the end, escaped."""
    text = re.sub(r"(\\+)(?='|$)", lambda m: m.group(1) * 2, text)
    return "'" + text.replace("'", "\\'") + "'"


def flatten(keys: Mapping, parse: Parse, prefix: str = "") -> list[str]:
    """Keyword arguments as overrides, a dict per group flattened to dotted keys.

    Example:
        >>> from transferkit.cli.app import parse_value
        >>> flatten({"data": {"root": "/x"}, "seed": 1, "model": "resnet18"}, parse_value)
        ['data.root=/x', 'seed=1', 'model=resnet18']
    """
    items: list[str] = []
    for name, value in keys.items():
        key = f"{prefix}{name}"
        if isinstance(value, Mapping) and value:
            items += flatten(value, parse, f"{key}.")
        else:
            items.append(f"{key}={override_text(value, key, parse)}")
    return items


def plain_value(text: str, parse: Parse) -> str:
    """Override text as the plain string it stands for (`'my recipe.yaml'` -> `my recipe.yaml`); text that
    is not a string value, or not valid, comes back as given."""
    try:
        value = parse(text)
    except Exception:  # noqa: BLE001 - invalid text: composing reports it
        return text
    return value if isinstance(value, str) else text
