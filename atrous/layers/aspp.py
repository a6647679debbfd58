"""Atrous Spatial Pyramid Pooling with image-level features (DeepLab v3, Sec. 3.3)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from atrous.layers.conv import ConvBNReLU, conv_bn_relu


class ASPPPooling(nn.Sequential):
    """Image-level branch: global average pool -> 1x1 conv-BN-ReLU -> broadcast back."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__(nn.AdaptiveAvgPool2d(1), ConvBNReLU(in_channels, out_channels, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        size = x.shape[-2:]
        pooled = super().forward(x)  # (N, C, 1, 1)
        return F.interpolate(pooled, size=size, mode="bilinear", align_corners=False)


class ASPP(nn.Module):
    """DeepLab v3 ASPP: one 1x1 conv, three 3x3 atrous convs and image pooling, each with BN,
    concatenated and projected by a 1x1 conv to `out_channels`.

    `rates` are (6, 12, 18) at output stride 16 and (12, 24, 36) at 8 (paper, Sec. 3.3).
    `separable=True` uses depthwise-separable atrous convs (DeepLab v3+, Sec. 3.1).
    `dropout` follows the reference implementations (0.1 after the projection).
    """

    def __init__(
        self,
        in_channels: int,
        rates: Sequence[int] = (6, 12, 18),
        out_channels: int = 256,
        *,
        separable: bool = False,
        image_pooling: bool = True,
        dropout: float = 0.1,
    ) -> None:
        super().__init__()
        branches: list[nn.Module] = [ConvBNReLU(in_channels, out_channels, 1)]
        for rate in rates:
            branches.append(conv_bn_relu(in_channels, out_channels, 3, dilation=rate, separable=separable))
        if image_pooling:
            branches.append(ASPPPooling(in_channels, out_channels))
        self.branches = nn.ModuleList(branches)
        self.project = nn.Sequential(
            ConvBNReLU(len(branches) * out_channels, out_channels, 1), nn.Dropout(dropout)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.project(torch.cat([branch(x) for branch in self.branches], dim=1))
