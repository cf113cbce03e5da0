"""The module that is exported: the task's network alone (no Lightning, no metrics), in eval mode,
optionally preceded by uint8 -> float normalisation."""

from __future__ import annotations

import torch
from torch import nn

from transferkit.data.inputs import InputSpec
from transferkit.models.fcn import FCNSegmentationModel


class Normalize(nn.Module):
    """uint8 N x H x W x C pixels -> the float32 N x C x H x W input the network was trained on.

    `mean_std`: `(x - 255 mean) / (255 std)` per channel, as albumentations' Normalize.
    `per_image`: `(x - mean(x)) / max(std(x), 1 / sqrt(C H W))` per image (the cifar recipe).
    """

    def __init__(self, spec: InputSpec) -> None:
        super().__init__()
        self.per_image = spec.normalization == "per_image"
        mean = torch.tensor(spec.mean, dtype=torch.float32).view(1, -1, 1, 1) * 255.0
        std = torch.tensor(spec.std, dtype=torch.float32).view(1, -1, 1, 1) * 255.0
        self.register_buffer("mean", mean)
        self.register_buffer("std", std)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        x = pixels.permute(0, 3, 1, 2).to(torch.float32)
        if not self.per_image:
            return (x - self.mean) / self.std
        mean = x.mean(dim=(1, 2, 3), keepdim=True)
        std = x.std(dim=(1, 2, 3), correction=0, keepdim=True)
        count = x.shape[1] * x.shape[2] * x.shape[3]
        floor = torch.ones_like(std) * count
        return (x - mean) / torch.maximum(std, torch.rsqrt(floor))


class InferenceGraph(nn.Module):
    """`images -> logits`: N x num_classes (classification) or N x num_classes x H x W (segmentation)."""

    def __init__(self, network: nn.Module, normalize: Normalize | None = None) -> None:
        super().__init__()
        self.network = network
        self.normalize = normalize

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.network(self.normalize(images) if self.normalize is not None else images)


def task_network(task) -> nn.Module:
    """The task's forward pass on images as a plain module (the same weights, shared)."""
    if task.kind == "segmentation":
        return FCNSegmentationModel(task.encoder, task.head, task.feature_indices)
    return nn.Sequential(task.encoder, task.head)  # ClassificationTask.forward on images


def build_graph(task, spec: InputSpec, include_preprocessing: bool) -> InferenceGraph:
    graph = InferenceGraph(task_network(task), Normalize(spec) if include_preprocessing else None).eval()
    for p in graph.parameters():
        p.requires_grad_(False)
    assert not any(m.training for m in graph.modules()), "an exported module must be in eval mode"
    return graph


def example_input(spec: InputSpec, include_preprocessing: bool, kind: str, batch: int = 2) -> torch.Tensor:
    """A batch to trace or export with. Segmentation takes an odd size (never a multiple of the
    encoder's stride), so the FCN's internal padding is part of the traced graph."""
    side = spec.image_size | 1 if kind == "segmentation" else spec.image_size
    generator = torch.Generator().manual_seed(0)
    if include_preprocessing:
        return torch.randint(0, 256, (batch, side, side, spec.in_chans), generator=generator, dtype=torch.uint8)
    return torch.randn(batch, spec.in_chans, side, side, generator=generator)


def other_shape_input(spec: InputSpec, include_preprocessing: bool, kind: str) -> torch.Tensor:
    """A batch of another shape than the parity images: 3 images (classification), or one image of
    another height and width (segmentation), to check that the dynamic axes really are dynamic."""
    batch, height, width = (1, spec.image_size + 13, spec.image_size + 7) if kind == "segmentation" \
        else (3, spec.image_size, spec.image_size)
    generator = torch.Generator().manual_seed(1)
    if include_preprocessing:
        return torch.randint(0, 256, (batch, height, width, spec.in_chans), generator=generator, dtype=torch.uint8)
    return torch.randn(batch, spec.in_chans, height, width, generator=generator)
