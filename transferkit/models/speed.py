"""GPU speed settings of a model: memory format and `torch.compile` (`model.channels_last`, `model.compile`)."""

from __future__ import annotations

import logging

import torch
import torch.nn as nn

from transferkit.errors import ConfigError

log = logging.getLogger(__name__)

# torch.compile's modes (`model.compile_mode`); None is torch's default.
COMPILE_MODES = (None, "default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")


def check_compile_mode(mode: str | None) -> str | None:
    if mode not in COMPILE_MODES:
        raise ConfigError(f"model.compile_mode={mode!r} is not a torch.compile mode; use one of "
                          f"{[m for m in COMPILE_MODES if m]} or null.")
    return mode


def apply_channels_last(module: nn.Module) -> nn.Module:
    """Store 4-D weights NHWC (channels last), in place: tensor cores' preferred layout for convolutions."""
    return module.to(memory_format=torch.channels_last)


def to_channels_last(x: torch.Tensor) -> torch.Tensor:
    """An image batch N x C x H x W in channels-last memory (other tensors unchanged)."""
    return x.contiguous(memory_format=torch.channels_last) if x.ndim == 4 else x


def apply_compile(module: nn.Module, mode: str | None = None) -> nn.Module:
    """Compile `module` in place (`nn.Module.compile`): its state dict keys stay the same, so
    checkpoints of a compiled run load into an uncompiled model. Compilation happens at the first call.

    Static shapes (`dynamic=False`): each batch shape gets its own graph, compiled once. With torch's
    default, an epoch's shorter last batch recompiles the model for any batch size, and that graph
    then serves every full batch of the later epochs, slower than the one made for their shape."""
    module.compile(mode=check_compile_mode(mode), dynamic=False)
    log.info("model.compile: %s compiled with torch.compile (mode %s)", type(module).__name__, mode or "default")
    return module
