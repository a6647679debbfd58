"""PSPNet's pyramid pooling module (Zhao et al., CVPR 2017, Sec. 3.2 and Fig. 3)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from atrous.layers.conv import ConvBNReLU


def region_means(length: int | torch.Tensor, bins: int, like: torch.Tensor) -> torch.Tensor:
    """(bins, length) matrix whose row i averages adaptive pooling's region i of a side of
    `length`: [floor(i L / bins), ceil((i + 1) L / bins)), as nn.AdaptiveAvgPool2d's.
    Built from the size at run time, so it traces and exports at any size."""
    index = torch.arange(bins, device=like.device)
    start = (index * length) // bins
    end = ((index + 1) * length + bins - 1) // bins
    position = torch.arange(length, device=like.device)
    inside = (position >= start[:, None]) & (position < end[:, None])  # (bins, length)
    return inside.to(like.dtype) / (end - start)[:, None].to(like.dtype)


class AdaptiveAvgPool2d(nn.Module):
    """nn.AdaptiveAvgPool2d(bins) as two products with region-mean matrices,
    (bins, H) @ (N, C, H, W) @ (W, bins) -> (N, C, bins, bins): the same values, but it
    exports to ONNX with free height and width (torch's exporter needs static sizes for
    adaptive pooling)."""

    def __init__(self, output_size: int) -> None:
        super().__init__()
        self.output_size = output_size  # bins per side, named as nn.AdaptiveAvgPool2d's

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = region_means(x.shape[-2], self.output_size, x)  # (bins, H)
        cols = region_means(x.shape[-1], self.output_size, x)  # (bins, W)
        return rows @ x @ cols.T

    def extra_repr(self) -> str:
        return f"output_size={self.output_size}"


class PyramidPooling(nn.Module):
    """Average-pool the input into `bins` x `bins` grids (1, 2, 3, 6), reduce each to
    `in_channels / len(bins)` channels with a 1x1 conv-BN-ReLU, upsample bilinearly and
    concatenate with the input: (N, C, H, W) -> (N, 2C, H, W) for four bins."""

    def __init__(self, in_channels: int, bins: Sequence[int] = (1, 2, 3, 6)) -> None:
        super().__init__()
        reduced = in_channels // len(bins)
        self.stages = nn.ModuleList(
            nn.Sequential(AdaptiveAvgPool2d(b), ConvBNReLU(in_channels, reduced, 1)) for b in bins
        )
        self.out_channels = in_channels + reduced * len(bins)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        size = x.shape[-2:]
        pooled = [
            F.interpolate(stage(x), size=size, mode="bilinear", align_corners=False)
            for stage in self.stages
        ]
        return torch.cat([x, *pooled], dim=1)
