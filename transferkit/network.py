"""The only network access transferkit makes: timm hub weights, and only when asked (`model.weights=hub`).

Kept free of heavy imports so the CLI can check connectivity before loading torch.
"""

from __future__ import annotations

import os
import socket

HUB_HOST = "huggingface.co"
HUB_TIMEOUT_S = 5.0


class WeightsUnavailableError(RuntimeError):
    """Pretrained weights were asked for but cannot be had (offline, missing file)."""


def check_hub_reachable(backbone: str, host: str = HUB_HOST, timeout_s: float = HUB_TIMEOUT_S) -> None:
    """Fail within `timeout_s` with one clear line when the weights hub cannot be reached."""
    if os.environ.get("HF_HUB_OFFLINE") == "1":
        return  # the user asked for the local Hugging Face cache only
    try:
        socket.create_connection((host, 443), timeout=timeout_s).close()
    except OSError as err:
        raise WeightsUnavailableError(
            f"model.weights=hub: cannot download pretrained {backbone!r} weights from {host} "
            f"({type(err).__name__}: {err}); this machine looks offline. Pass a local file with "
            "model.weights=/path/to/weights.safetensors, use a house backbone (model.weights=charnet), "
            "or set HF_HUB_OFFLINE=1 if the weights are already in your Hugging Face cache."
        ) from None
