"""DeepLab v2's ASPP (Chen et al., TPAMI 2017, Sec. 3.3 and Fig. 7): parallel atrous 3x3
classifiers whose score maps are summed."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from atrous.layers.init import keep_init


class SummedBranches(nn.Module):
    """Parallel branches whose outputs are summed (ASPP-L's score maps)."""

    def __init__(self, branches: Sequence[nn.Module]) -> None:
        super().__init__()
        self.branches = nn.ModuleList(branches)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.stack([branch(x) for branch in self.branches]).sum(dim=0)


class ASPPSum(SummedBranches):
    """One 3x3 convolution per rate straight to `num_classes` (ASPP-L: rates 6, 12, 18, 24),
    outputs summed: (N, C, H, W) -> (N, num_classes, H, W).

    On ResNet-101 (the reference deeplab-v2 prototxt) each branch is the single 3x3
    classifier built here; the VGG16 form sums DeepLab v1's fc6-fc7-fc8 heads instead
    (atrous.models.deeplab). `init_std` is the reference's Gaussian initialisation (std
    0.01, bias 0).
    """

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        rates: Sequence[int] = (6, 12, 18, 24),
        *,
        init_std: float = 0.01,
    ) -> None:
        super().__init__([nn.Conv2d(in_channels, num_classes, 3, padding=rate, dilation=rate) for rate in rates])
        for conv in self.branches:
            nn.init.normal_(conv.weight, std=init_std)
            nn.init.zeros_(conv.bias)
            keep_init(conv)

