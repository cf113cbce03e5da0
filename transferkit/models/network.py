"""The only network access transferkit makes: timm hub weights, and only when asked for
(`model.weights=hub`, or `auto` with a hub-backed model) and missing from the local cache.

Kept free of heavy imports.
"""

from __future__ import annotations

import os
import socket

HUB_HOST = "huggingface.co"
HUB_TIMEOUT_S = 5.0


class WeightsUnavailableError(RuntimeError):
    """Pretrained weights were asked for but cannot be had (offline, missing file)."""


def check_hub_reachable(backbone: str, host: str = HUB_HOST, timeout_s: float = HUB_TIMEOUT_S,
                        missing_from: str | None = None, repo: str | None = None) -> None:
    """Fail within `timeout_s` with one clear line when the weights hub cannot be reached."""
    offline = os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes")
    reason = "HF_HUB_OFFLINE is set" if offline else None
    if not offline:
        try:
            socket.create_connection((host, 443), timeout=timeout_s).close()
            return
        except OSError as err:
            reason = f"{host} cannot be reached ({type(err).__name__}: {err})"
    cache = f" are not in the Hugging Face cache ({missing_from}) and" if missing_from else ""
    fill = f" (`hf download {repo}` on a machine online)" if repo else ""
    raise WeightsUnavailableError(
        f"model.weights: pretrained {backbone!r} weights{cache} cannot be downloaded: {reason}. "
        "Use model.weights=charnet (the offline house backbone), a local file "
        f"(model.weights=/path/to/weights.safetensors), or fill the cache{fill}."
    )
