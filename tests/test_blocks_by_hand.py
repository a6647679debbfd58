"""RefineNet's blocks and Attention-to-Scale's fusion against computations written out by hand
in NumPy (float64): convolution as the sum over its taps, max pooling as the maximum over its
window, bilinear resizing from its half-pixel formula. Nothing here calls torch's convolution,
pooling or interpolation for the reference side.

The papers: Lin et al., CVPR 2017, Sec. 3.2 and Fig. 2 (RefineNet: residual conv unit,
multi-resolution fusion, chained residual pooling); Chen et al., CVPR 2016, Eq. 2 (the per-pixel
softmax over scales weighting the sum of the per-scale scores)."""

from __future__ import annotations

import numpy as np
import torch

import atrous
from atrous.layers.refinenet import (
    ChainedResidualPooling,
    MultiResolutionFusion,
    RefineNetBlock,
    ResidualConvUnit,
)
from tests.by_hand import bilinear, conv, max_pool, relu, softmax


def randomise(module: torch.nn.Module, seed: int = 0) -> None:
    """Every weight non-zero (the residual paths start at zero in atrous, which would hide them)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in module.parameters():
            parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.3)


def rcu_by_hand(x: np.ndarray, unit: ResidualConvUnit) -> np.ndarray:
    """Fig. 2b: ReLU - 3x3 conv - ReLU - 3x3 conv, plus the input."""
    y = conv(relu(x), unit.conv1.weight, unit.conv1.bias)
    return x + conv(relu(y), unit.conv2.weight, unit.conv2.bias)


def crp_by_hand(x: np.ndarray, crp: ChainedResidualPooling) -> np.ndarray:
    """Fig. 2d: ReLU; each block pools (5x5, stride 1) and convolves the previous block's output,
    and every block's output is added to the sum."""
    x = relu(x)
    total, path = x.copy(), x
    for block in crp.blocks:
        path = conv(max_pool(path), block[1].weight)
        total = total + path
    return total


def fusion_by_hand(inputs: list[np.ndarray], fusion: MultiResolutionFusion) -> np.ndarray:
    """Fig. 2c: a 3x3 conv per input, each upsampled to the largest, summed."""
    height, width = max((x.shape[1:] for x in inputs), key=lambda s: s[0] * s[1])
    total = 0.0
    for layer, x in zip(fusion.convs, inputs, strict=True):
        y = conv(x, layer.weight, layer.bias)
        total = total + (y if y.shape[1:] == (height, width) else bilinear(y, height, width))
    return total


def as_numpy(x: torch.Tensor) -> np.ndarray:
    return x[0].detach().double().numpy()


def run(module: torch.nn.Module, *inputs: torch.Tensor) -> np.ndarray:
    with torch.no_grad():
        return as_numpy(module(*inputs))


def test_residual_conv_unit_by_hand() -> None:
    unit = ResidualConvUnit(3)
    randomise(unit)
    x = torch.randn(1, 3, 7, 9)
    np.testing.assert_allclose(run(unit, x), rcu_by_hand(as_numpy(x), unit), rtol=1e-5, atol=1e-5)


def test_chained_residual_pooling_by_hand() -> None:
    crp = ChainedResidualPooling(3, num_blocks=2)
    randomise(crp)
    x = torch.randn(1, 3, 9, 8)
    expected = crp_by_hand(as_numpy(x), crp)
    np.testing.assert_allclose(run(crp, x), expected, rtol=1e-5, atol=1e-5)
    # the chain: the second block pools the first block's output, not the input
    parallel = relu(as_numpy(x)) + sum(conv(max_pool(relu(as_numpy(x))), b[1].weight) for b in crp.blocks)
    assert np.abs(expected - parallel).max() > 1e-2


def test_multi_resolution_fusion_by_hand() -> None:
    fusion = MultiResolutionFusion([3, 4], 2)
    randomise(fusion)
    fine, coarse = torch.randn(1, 3, 10, 14), torch.randn(1, 4, 5, 7)
    expected = fusion_by_hand([as_numpy(fine), as_numpy(coarse)], fusion)
    with torch.no_grad():
        got = as_numpy(fusion([fine, coarse]))
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)


def test_refinenet_block_by_hand() -> None:
    """Fig. 2a: two RCUs per path, fusion, chained residual pooling, one output RCU."""
    block = RefineNetBlock([3, 4], 3, crp_blocks=2)
    randomise(block)
    fine, coarse = torch.randn(1, 3, 8, 6), torch.randn(1, 4, 4, 3)
    adapted = []
    for units, x in zip(block.adapt, (fine, coarse), strict=True):
        y = as_numpy(x)
        for unit in units:
            y = rcu_by_hand(y, unit)
        adapted.append(y)
    expected = rcu_by_hand(crp_by_hand(fusion_by_hand(adapted, block.fuse), block.pool), block.output)
    with torch.no_grad():
        got = as_numpy(block([fine, coarse]))
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4)


def test_attention_to_scale_sums_scales_with_softmax_weights_by_hand() -> None:
    """Eq. 2: out = sum_s w_s * f_s, w_s = softmax over scales of the attention model's scores on
    the concatenated features; the 0.5-scale maps bilinearly resized to the scale-1 size."""
    torch.manual_seed(0)
    model = atrous.create_model("attention_to_scale", 3, base="deeplab_v2", backbone="resnet18",
                                attention_channels=8).eval()
    randomise(model.attention, seed=1)
    x = torch.randn(1, 3, 64, 80)  # a multiple of the divisor: no padding
    half = torch.nn.functional.interpolate(x, size=(32, 40), mode="bilinear", align_corners=False)
    with torch.no_grad():
        got = as_numpy(model.segment(x)["out"])
        maps = [model.base.features_and_logits(inp) for inp in (x, half)]
    height, width = maps[0][1].shape[-2:]  # (8, 10): stride 8 at scale 1
    features = [bilinear(as_numpy(f), height, width) for f, _ in maps]
    scores = [bilinear(as_numpy(lg), height, width) for _, lg in maps]
    attention = model.attention
    hidden = relu(conv(np.concatenate(features), attention[0].weight, attention[0].bias))
    logits = conv(hidden, attention[3].weight, attention[3].bias)  # (2, h, w), one per scale
    weights = softmax(logits)
    expected = weights[0] * scores[0] + weights[1] * scores[1]
    assert np.abs(weights[0] - 0.5).max() > 0.05, "the test needs weights that differ from a mean"
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4)
