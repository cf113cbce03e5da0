"""`regularization.l1`: an L1 penalty on the trainable weights, added to the training loss.

Like weight decay (`transferkit.tasks.finetune.no_decay_names`), it skips biases, norm layers and the
parameters timm marks `no_weight_decay()` (position embeddings, ...): shrinking those towards 0
does not make a model simpler, it only shifts activations. Frozen parameters get no gradient, so
they are left out too: the penalty is what the optimizer can act on.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from transferkit.errors import ConfigError
from transferkit.tasks.finetune import no_decay_names


def check_l1(l1: float) -> float:
    if not isinstance(l1, (int, float)) or isinstance(l1, bool) or l1 < 0:
        raise ConfigError(f"regularization.l1={l1!r} must be a number >= 0 (e.g. 1e-5; 0 = off).")
    return float(l1)


def l1_weights(*modules: nn.Module) -> list[torch.Tensor]:
    """The parameters the L1 penalty covers: trainable, and not a bias, norm or no-decay parameter."""
    found = []
    for module in modules:
        skip = no_decay_names(module)
        found += [p for n, p in module.named_parameters() if p.requires_grad and n not in skip]
    return found


def l1_penalty(weights: list[torch.Tensor]) -> torch.Tensor:
    """Sum of |w| over `weights` (0 when there are none)."""
    if not weights:
        return torch.zeros(())
    return torch.stack([w.abs().sum() for w in weights]).sum()
