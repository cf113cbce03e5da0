"""Classifier heads put on top of a pooled backbone (the backbone keeps its GAP)."""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn as nn

from transferkit.errors import ConfigError

Init = Literal["kaiming", "xavier"]


def create_head(in_features: int, num_classes: int, *, dropout: float = 0.0,
                hidden_dim: int | None = None, init: Init = "kaiming") -> nn.Sequential:
    """Dropout -> Linear, or Dropout -> Linear -> ReLU -> Dropout -> Linear when `hidden_dim` is set.

    `init="kaiming"` uses He initialisation for layers followed by ReLU (the right
    scale for ReLU nets); `init="xavier"` uses Glorot for all layers. The output
    layer always starts small so the first logits are near uniform.
    """
    if not 0.0 <= dropout < 1.0:
        raise ValueError(f"model.dropout={dropout!r} must be in [0, 1).")
    layers: list[nn.Module] = [nn.Dropout(dropout)]
    width = in_features
    if hidden_dim:
        hidden = nn.Linear(in_features, hidden_dim)
        init_linear(hidden, init, relu=True)
        layers += [hidden, nn.ReLU(inplace=True), nn.Dropout(dropout)]
        width = hidden_dim
    out = nn.Linear(width, num_classes)
    init_linear(out, init, relu=False)
    layers.append(out)
    return nn.Sequential(*layers)


def create_spatial_dropout(p: float) -> nn.Dropout2d | None:
    """`model.spatial_dropout`: channel-wise dropout (whole feature maps) before pooling; None when 0."""
    if isinstance(p, bool) or not isinstance(p, (int, float)) or not 0.0 <= p < 1.0:
        raise ConfigError(f"model.spatial_dropout={p!r} must be in [0, 1) (e.g. 0.2; 0 = off).")
    return nn.Dropout2d(float(p)) if p else None


def pooled_with_spatial_dropout(backbone: nn.Module, dropout: nn.Dropout2d, x: torch.Tensor) -> torch.Tensor:
    """What `backbone(x)` returns (timm, `num_classes=0`: pooled features), with `dropout` applied to
    the last feature map between `forward_features` and the pooling in `forward_head`."""
    features = backbone.forward_features(x)
    if features.ndim != 4 or features.shape[1] != backbone.num_features:
        raise ConfigError(
            f"model.spatial_dropout={dropout.p!r} drops channels of an N x C x H x W feature map, but "
            f"{type(backbone).__name__} gives {tuple(features.shape)} (a transformer's tokens or channels-last). "
            "Use a CNN backbone (ResNet, EfficientNet, ConvNeXt, ...), or model.dropout / model.drop_path_rate.")
    return backbone.forward_head(dropout(features))


def init_linear(layer: nn.Linear, init: Init, relu: bool) -> None:
    match init:
        case "kaiming":
            if relu:
                nn.init.kaiming_normal_(layer.weight, nonlinearity="relu")
            else:
                nn.init.kaiming_normal_(layer.weight, nonlinearity="linear")
                layer.weight.data.mul_(0.1)
        case "xavier":
            nn.init.xavier_uniform_(layer.weight)
        case _:
            raise ValueError(f"model.init={init!r} is unknown; use 'kaiming' or 'xavier'.")
    nn.init.zeros_(layer.bias)


def set_linear_head(head: nn.Module, weight, bias) -> None:
    """Write a solved classifier (`weight` num_classes x in_features, `bias` num_classes) into `head`.

    Only a head without a hidden layer (`model.hidden_dim=null`) is one linear map of the features.
    """
    layers = [m for m in head.modules() if isinstance(m, nn.Linear)]
    if len(layers) != 1:
        raise ConfigError(f"model.hidden_dim: the head has {len(layers)} linear layers; a solved head "
                          "(finetune.head_solver=lbfgs, finetune.lpft=true) needs exactly one. Set "
                          "model.hidden_dim=null, or finetune.head_solver=sgd and finetune.lpft=false.")
    layer = layers[0]
    weight, bias = torch.as_tensor(weight), torch.as_tensor(bias)
    if tuple(weight.shape) != tuple(layer.weight.shape) or tuple(bias.shape) != tuple(layer.bias.shape):
        raise ValueError(f"solved head {tuple(weight.shape)} + {tuple(bias.shape)} does not fit "
                         f"{tuple(layer.weight.shape)} + {tuple(layer.bias.shape)}.")
    with torch.no_grad():
        layer.weight.copy_(weight)
        layer.bias.copy_(bias)
