"""PSPNet's pyramid pooling module (Zhao et al., CVPR 2017, Sec. 3.2 and Fig. 3)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from atrous.layers.conv import ConvBNReLU


class PyramidPooling(nn.Module):
    """Average-pool the input into `bins` x `bins` grids (1, 2, 3, 6), reduce each to
    `in_channels / len(bins)` channels with a 1x1 conv-BN-ReLU, upsample bilinearly and
    concatenate with the input: (N, C, H, W) -> (N, 2C, H, W) for four bins."""

    def __init__(self, in_channels: int, bins: Sequence[int] = (1, 2, 3, 6)) -> None:
        super().__init__()
        reduced = in_channels // len(bins)
        self.stages = nn.ModuleList(
            nn.Sequential(nn.AdaptiveAvgPool2d(b), ConvBNReLU(in_channels, reduced, 1)) for b in bins
        )
        self.out_channels = in_channels + reduced * len(bins)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        size = x.shape[-2:]
        pooled = [
            F.interpolate(stage(x), size=size, mode="bilinear", align_corners=False)
            for stage in self.stages
        ]
        return torch.cat([x, *pooled], dim=1)
