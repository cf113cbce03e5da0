"""LeNet-5 (LeCun et al., 1998) as a timm model, for the course's comparisons: `lenet5`.

Registered with timm when this module is imported (the `summary` command does it), not at
`import transferkit`. C1 conv 5x5 (6) -> S2 avg-pool 2 -> C3 conv 5x5 (16) -> S4 avg-pool 2 ->
C5 conv 5x5 (120) -> F6 linear 84 -> output, tanh between, on 1x32x32 inputs: 61,706 parameters
with 10 classes. (C3's partial connection table is the full one here, as most re-implementations do.)
"""

from __future__ import annotations

import torch
import torch.nn as nn
from timm.models import register_model


class LeNet5(nn.Module):
    """timm-style: `forward_features` -> `forward_head`; `num_classes=0` leaves F6's 84 features."""

    def __init__(self, num_classes: int = 10, in_chans: int = 1, **_: object) -> None:
        super().__init__()
        self.num_classes, self.num_features = num_classes, 84
        self.c1 = nn.Conv2d(in_chans, 6, 5)
        self.s2 = nn.AvgPool2d(2)
        self.c3 = nn.Conv2d(6, 16, 5)
        self.s4 = nn.AvgPool2d(2)
        self.c5 = nn.Conv2d(16, 120, 5)
        self.f6 = nn.Linear(120, 84)
        self.act = nn.Tanh()
        self.head = nn.Linear(84, num_classes) if num_classes else nn.Identity()
        self.feature_info = [dict(num_chs=6, reduction=2, module="s2"), dict(num_chs=16, reduction=4, module="s4"),
                             dict(num_chs=120, reduction=32, module="c5")]

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.s2(self.act(self.c1(x)))
        x = self.s4(self.act(self.c3(x)))
        return self.act(self.c5(x))

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = self.act(self.f6(x.flatten(1)))
        return x if pre_logits else self.head(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


@register_model
def lenet5(pretrained: bool = False, **kwargs) -> LeNet5:
    if pretrained:
        raise ValueError("lenet5 has no pretrained weights; use model.weights=none.")
    for key in ("pretrained_cfg", "pretrained_cfg_overlay", "cache_dir"):
        kwargs.pop(key, None)
    return LeNet5(**kwargs)
