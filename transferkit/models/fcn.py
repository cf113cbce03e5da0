"""FCN decoders (Long et al., 2015) on the multi-scale features of any timm backbone.

Each used backbone stage gets a zero-initialised 1x1 score layer; coarse scores are upsampled by
transposed convolutions initialised to bilinear interpolation and fused with the finer scores by
addition (FCN-32s uses stride 32 only, FCN-16s adds stride 16, FCN-8s adds stride 8).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from transferkit.models.backbones import create_backbone

log = logging.getLogger(__name__)

FCNVariant = Literal["fcn32s", "fcn16s", "fcn8s"]

# Output strides each head fuses, coarsest last.
HEAD_REDUCTIONS: dict[str, tuple[int, ...]] = {
    "fcn32s": (32,),
    "fcn16s": (16, 32),
    "fcn8s": (8, 16, 32),
}


def check_head(head: str) -> tuple[int, ...]:
    """Return the reductions ``head`` fuses, or raise naming ``model.head``."""
    if head not in HEAD_REDUCTIONS:
        raise ValueError(f"model.head={head!r} is unknown; use one of {sorted(HEAD_REDUCTIONS)}.")
    return HEAD_REDUCTIONS[head]


def choose_feature_indices(
    feature_info: object | Sequence[int], variant: str, backbone: str = "?"
) -> list[int]:
    """Pick the feature indices whose reductions are the strides ``variant`` fuses (8, 16, 32).

    Args:
        feature_info: a timm ``FeatureInfo`` (anything with ``.reduction()``) or the list of
            reductions of the backbone's feature outputs, in output order.
        variant: ``fcn32s``, ``fcn16s`` or ``fcn8s``.
        backbone: the backbone name, only for the error message.

    Returns:
        One index into the feature list per required stride, finest first. When several stages
        share a stride, the deepest one is used.
    """
    reductions = [int(r) for r in _reductions(feature_info)]
    indices = []
    for wanted in check_head(variant):
        matches = [i for i, r in enumerate(reductions) if r == wanted]
        if not matches:
            raise ValueError(
                f"model.backbone={backbone!r} has no feature stage with stride {wanted} (its stages "
                f"have strides {reductions}), which model.head={variant!r} needs. FCN heads need a "
                "hierarchical backbone with stride-8/16/32 stages (resnet*, convnext*, efficientnet*, "
                "regnet*, ...); single-stride backbones such as plain ViTs are not supported."
            )
        indices.append(matches[-1])
    return indices


def _reductions(feature_info: object | Sequence[int]) -> Sequence[int]:
    reduction = getattr(feature_info, "reduction", None)
    return reduction() if callable(reduction) else feature_info  # type: ignore[return-value]


def bilinear_kernel(channels: int, kernel_size: int) -> torch.Tensor:
    """Transposed-conv weight ``(channels, channels, k, k)`` that performs bilinear upsampling.

    Same construction as ``get_upsampling_weight`` in wkentaro/pytorch-fcn: each channel maps to
    itself with a separable triangle filter; no channel mixing.
    """
    factor = (kernel_size + 1) // 2
    center = factor - 1 if kernel_size % 2 == 1 else factor - 0.5
    og = torch.arange(kernel_size, dtype=torch.float32)
    filt1d = 1 - (og - center).abs() / factor
    filt = filt1d[:, None] * filt1d[None, :]
    weight = torch.zeros(channels, channels, kernel_size, kernel_size)
    weight[range(channels), range(channels)] = filt
    return weight


def create_upsampler(channels: int, factor: int, learnable: bool = True) -> nn.ConvTranspose2d:
    """``ConvTranspose2d`` that upsamples exactly ``factor`` times, initialised to bilinear.

    With kernel ``2f``, stride ``f`` and padding ``f/2`` an ``H x W`` input gives ``fH x fW`` and,
    away from the borders, equals ``F.interpolate(mode="bilinear", align_corners=False)``.
    """
    if factor < 2 or factor % 2:
        raise ValueError(f"upsampling factor must be an even integer >= 2, got {factor!r}.")
    layer = nn.ConvTranspose2d(
        channels, channels, kernel_size=2 * factor, stride=factor, padding=factor // 2, bias=False
    )
    with torch.no_grad():
        layer.weight.copy_(bilinear_kernel(channels, 2 * factor))
    layer.weight.requires_grad_(learnable)
    return layer


def create_score_layer(in_channels: int, num_classes: int) -> nn.Conv2d:
    """Zero-initialised 1x1 conv: an untrained skip adds nothing to the coarser prediction."""
    layer = nn.Conv2d(in_channels, num_classes, kernel_size=1)
    nn.init.zeros_(layer.weight)
    nn.init.zeros_(layer.bias)
    return layer


def match_size(x: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Crop (or zero-pad at the bottom/right) ``x`` to ``height x width``."""
    x = x[..., :height, :width]
    pad_h, pad_w = height - x.shape[-2], width - x.shape[-1]
    return F.pad(x, (0, pad_w, 0, pad_h)) if pad_h or pad_w else x


class FCNDecoder(nn.Module):
    """FCN-32s/16s/8s head: score layers, bilinear-initialised transposed convs, additive skips.

    Args:
        in_channels: channels of the used feature maps, finest first.
        reductions: their strides (e.g. ``[8, 16, 32]`` for FCN-8s), finest first.
        num_classes: output channels.
        variant: ``fcn32s``, ``fcn16s`` or ``fcn8s``; fixes how many features are fused.
        learnable_upsampling: ``False`` freezes every transposed conv at bilinear interpolation.
    """

    def __init__(
        self,
        in_channels: list[int],
        reductions: list[int],
        num_classes: int,
        variant: FCNVariant,
        learnable_upsampling: bool = True,
    ) -> None:
        super().__init__()
        wanted = check_head(variant)
        if len(in_channels) != len(wanted) or len(reductions) != len(wanted):
            raise ValueError(
                f"model.head={variant!r} fuses {len(wanted)} feature maps; got in_channels="
                f"{in_channels!r} and reductions={reductions!r}."
            )
        if num_classes < 1:
            raise ValueError(f"data.num_classes={num_classes!r} must be >= 1.")
        self.variant = variant
        self.reductions = list(reductions)
        self.scores = nn.ModuleList(create_score_layer(c, num_classes) for c in in_channels)
        # Between consecutive stages: coarse -> next finer.
        self.skip_upsamplers = nn.ModuleList(
            create_upsampler(num_classes, coarse // fine, learnable_upsampling)
            for fine, coarse in zip(reductions[:-1], reductions[1:])
        )
        self.final_upsampler = create_upsampler(num_classes, reductions[0], learnable_upsampling)

    def forward(self, features: Sequence[torch.Tensor]) -> torch.Tensor:
        """Fuse ``features`` (finest first) into logits at stride 1 of the finest feature map."""
        score = self.scores[-1](features[-1])
        for i in range(len(features) - 2, -1, -1):
            skip = self.scores[i](features[i])
            up = self.skip_upsamplers[i](score)
            score = match_size(up, skip.shape[-2], skip.shape[-1]) + skip
        return self.final_upsampler(score)


def fcn_forward(
    encoder: nn.Module, decoder: FCNDecoder, feature_indices: Sequence[int], x: torch.Tensor
) -> torch.Tensor:
    """Logits of the same height and width as ``x``, whatever its size.

    ``x`` is zero-padded at the bottom/right to a multiple of the coarsest stride, so every
    feature map divides evenly, and the logits are cropped back.
    """
    height, width = x.shape[-2:]
    multiple = max(decoder.reductions)
    pad_h, pad_w = -height % multiple, -width % multiple
    if pad_h or pad_w:
        x = F.pad(x, (0, pad_w, 0, pad_h))
    features = encoder(x)
    logits = decoder([features[i] for i in feature_indices])
    return match_size(logits, height, width)


class FCNSegmentationModel(nn.Module):
    """Encoder (timm ``features_only`` backbone) + :class:`FCNDecoder`; output size = input size."""

    def __init__(self, encoder: nn.Module, decoder: FCNDecoder, feature_indices: list[int]) -> None:
        super().__init__()
        self.encoder = encoder
        self.decoder = decoder
        self.feature_indices = list(feature_indices)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return fcn_forward(self.encoder, self.decoder, self.feature_indices, x)


def create_segmentation_model(
    backbone: str,
    num_classes: int,
    head: str = "fcn8s",
    in_chans: int = 3,
    learnable_upsampling: bool = True,
    drop_rate: float = 0.0,
    drop_path_rate: float = 0.0,
) -> FCNSegmentationModel:
    """Build a timm feature backbone and the FCN head ``head`` on top of it."""
    check_head(head)  # fail before building the backbone
    encoder = create_backbone(
        backbone,
        in_chans=in_chans,
        features_only=True,
        drop_rate=drop_rate,
        drop_path_rate=drop_path_rate,
    )
    indices = choose_feature_indices(encoder.feature_info, head, backbone=backbone)
    channels = [encoder.feature_info.channels()[i] for i in indices]
    reductions = [encoder.feature_info.reduction()[i] for i in indices]
    decoder = FCNDecoder(channels, reductions, num_classes, head, learnable_upsampling)  # type: ignore[arg-type]
    log.info("%s on %s: stages %s, channels %s, strides %s", head, backbone, indices, channels, reductions)
    return FCNSegmentationModel(encoder, decoder, indices)
