"""FCN heads: exact output size, bilinear-initialised upsamplers, zero-initialised score layers."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from transferkit.models.fcn import (
    FCNDecoder,
    bilinear_kernel,
    choose_feature_indices,
    create_segmentation_model,
    create_upsampler,
)

HEADS = ("fcn32s", "fcn16s", "fcn8s")


@pytest.mark.parametrize("backbone", ["test_resnet", "test_convnext"])
@pytest.mark.parametrize("head", HEADS)
def test_output_size_equals_input_size_for_odd_sizes(backbone: str, head: str) -> None:
    model = create_segmentation_model(backbone, num_classes=5, head=head).eval()
    with torch.no_grad():
        for height, width in ((97, 133), (64, 64), (33, 31)):
            out = model(torch.randn(2, 3, height, width))
            assert out.shape == (2, 5, height, width)


def test_single_channel_input() -> None:
    model = create_segmentation_model("test_resnet", num_classes=3, head="fcn8s", in_chans=1).eval()
    with torch.no_grad():
        assert model(torch.randn(1, 1, 40, 50)).shape == (1, 3, 40, 50)


@pytest.mark.parametrize("factor", [2, 4, 8, 16, 32])
def test_upsampler_starts_as_bilinear_interpolation(factor: int) -> None:
    torch.manual_seed(0)
    x = torch.randn(2, 3, 6, 7)
    up = create_upsampler(3, factor)
    with torch.no_grad():
        ours = up(x)
    reference = F.interpolate(x, scale_factor=factor, mode="bilinear", align_corners=False)
    assert ours.shape == reference.shape == (2, 3, 6 * factor, 7 * factor)
    # Transposed convs see zeros past the border while interpolate clamps: compare the interior.
    inner = (slice(None), slice(None), slice(factor, -factor), slice(factor, -factor))
    torch.testing.assert_close(ours[inner], reference[inner], atol=1e-5, rtol=1e-5)
    # ...and the border really differs, so the interior check is not vacuous.
    assert not torch.allclose(ours, reference, atol=1e-3)


def test_bilinear_kernel_is_channelwise_triangle() -> None:
    weight = bilinear_kernel(2, 4)
    row = torch.tensor([0.25, 0.75, 0.75, 0.25])
    torch.testing.assert_close(weight[0, 0], row[:, None] * row[None, :])
    assert weight[0, 1].abs().sum() == 0 and weight[1, 0].abs().sum() == 0


def test_decoder_starts_from_zero_scores_and_bilinear_upsamplers() -> None:
    decoder = FCNDecoder([8, 16, 32], [8, 16, 32], num_classes=4, variant="fcn8s")
    for score in decoder.scores:
        assert score.weight.abs().sum() == 0 and score.bias.abs().sum() == 0
    upsamplers = [*decoder.skip_upsamplers, decoder.final_upsampler]
    assert [u.stride[0] for u in upsamplers] == [2, 2, 8]
    for up in upsamplers:
        torch.testing.assert_close(up.weight, bilinear_kernel(4, up.kernel_size[0]))
        assert up.weight.requires_grad
    # A 64 x 64 input seen at strides 8, 16 and 32.
    features = [torch.randn(1, c, 64 // c, 64 // c) for c in (8, 16, 32)]
    logits = decoder(features)
    assert logits.shape == (1, 4, 64, 64) and logits.abs().sum() == 0
    logits.sum().backward()
    assert decoder.scores[0].weight.grad.abs().sum() > 0


def test_frozen_upsamplers() -> None:
    decoder = FCNDecoder([8], [32], num_classes=2, variant="fcn32s", learnable_upsampling=False)
    assert not decoder.final_upsampler.weight.requires_grad
    assert decoder.final_upsampler.stride == (32, 32)


def test_fcn8s_uses_three_stages_and_fcn32s_one() -> None:
    reductions = [2, 4, 8, 16, 32]
    assert choose_feature_indices(reductions, "fcn8s") == [2, 3, 4]
    assert choose_feature_indices(reductions, "fcn16s") == [3, 4]
    assert choose_feature_indices(reductions, "fcn32s") == [4]
    assert choose_feature_indices([4, 8, 8, 16, 32], "fcn8s") == [2, 3, 4]


def test_single_stride_backbone_is_rejected_naming_the_key() -> None:
    with pytest.raises(ValueError, match=r"model.backbone='vit_tiny'.*stride 32.*\[16, 16, 16\]"):
        choose_feature_indices([16, 16, 16], "fcn32s", backbone="vit_tiny")


def test_unknown_head_is_rejected_naming_the_key() -> None:
    with pytest.raises(ValueError, match=r"model.head='fcn4s'.*fcn16s"):
        create_segmentation_model("test_resnet", num_classes=2, head="fcn4s")
