# TEMPORARY stand-in until branch `embedded` merges (same API).
from __future__ import annotations
from dataclasses import dataclass
from transferkit.errors import ConfigError, did_you_mean

@dataclass(frozen=True)
class EmbeddedSpec:
    name: str
    kind: str
    description: str
    in_chans: int | None
    image_size: int | None
    load: object = None

EMBEDDED = {n: EmbeddedSpec(n, "classification", n, None, None) for n in ("digits", "fonts", "synthdigits", "shapes")}
EMBEDDED = {**EMBEDDED, "scenes": EmbeddedSpec("scenes", "segmentation", "scenes", 3, 48)}

def embedded_spec(name: str, kind: str | None = None) -> EmbeddedSpec:
    if name not in EMBEDDED:
        raise ConfigError(f"data.embedded={name!r} is unknown; use one of {sorted(EMBEDDED)}.{did_you_mean(name, EMBEDDED)}")
    return EMBEDDED[name]
