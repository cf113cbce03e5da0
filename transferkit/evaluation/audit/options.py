"""The `audit` config block: defaults, and each value checked (an error names `audit.<key>`)."""

from __future__ import annotations

from transferkit.errors import ConfigError

# Calibrated on the design rows of benchmarks/audit.py (see README "Audit a data set"): at this aligned
# 32 x 32 correlation distance, resized, re-encoded, brightened and 3-5 % cropped copies pass and
# different handwritten digits (as alike as two images of a data set get) do not.
NEAR_THRESHOLD = 0.007
AUDIT_DEFAULTS: dict = {"folds": 5, "neighbours": 5, "near_threshold": NEAR_THRESHOLD, "prefilter": 0.08,
                        "outlier_neighbours": 5, "shown": 24}
WHOLE = {"folds": 2, "neighbours": 1, "outlier_neighbours": 1, "shown": 0}  # whole numbers and their minimum
FRACTIONS = ("near_threshold", "prefilter")  # distances in [0, 2]


def audit_options(given: dict | None) -> dict:
    """The `audit` options over their defaults; an unknown key or a bad value is named."""
    options = {**AUDIT_DEFAULTS, **dict(given or {})}
    unknown = sorted(set(options) - set(AUDIT_DEFAULTS))
    if unknown:
        raise ConfigError(f"audit.{unknown[0]} is not an audit option; valid keys: {sorted(AUDIT_DEFAULTS)}.")
    for key, least in WHOLE.items():
        value = options[key]
        if isinstance(value, bool) or not isinstance(value, int) or value < least:
            raise ConfigError(f"audit.{key}={value!r} must be a whole number >= {least}.")
    for key in FRACTIONS:
        value = options[key]
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 2:
            raise ConfigError(f"audit.{key}={value!r} must be a distance in [0, 2] (1 - correlation).")
    return options
