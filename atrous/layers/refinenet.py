"""RefineNet blocks (Lin, Milan, Shen, Reid, CVPR 2017, Sec. 3.2 and Fig. 2): residual
convolution unit, multi-resolution fusion, chained residual pooling."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from atrous.layers.init import keep_init


def conv3x3(in_channels: int, out_channels: int, bias: bool = True) -> nn.Conv2d:
    return nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=bias)


class ResidualConvUnit(nn.Module):
    """RCU (Fig. 2b): ReLU - 3x3 conv - ReLU - 3x3 conv, plus the identity. No batch norm.

    The branch's last convolution starts at zero, so that an RCU starts as the identity
    (as Fixup and zero-gamma ResNets do for residual units without normalisation): the
    paper does not say how its new layers start, and with a He-initialised second conv
    the variance doubles per RCU and a from-scratch RefineNet diverges at once."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv1 = conv3x3(channels, channels)
        self.conv2 = conv3x3(channels, channels)
        nn.init.zeros_(self.conv2.weight)
        nn.init.zeros_(self.conv2.bias)
        keep_init(self.conv2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv1(F.relu(x))
        y = self.conv2(F.relu(y))
        return x + y


class MultiResolutionFusion(nn.Module):
    """Fig. 2c: a 3x3 conv per input to the smallest input width, upsampling to the largest
    resolution (the first input's), summation."""

    def __init__(self, in_channels: Sequence[int], out_channels: int) -> None:
        super().__init__()
        self.convs = nn.ModuleList(conv3x3(c, out_channels) for c in in_channels)

    def forward(self, inputs: Sequence[torch.Tensor]) -> torch.Tensor:
        size = max((x.shape[-2:] for x in inputs), key=lambda s: s[0] * s[1])
        out = None
        for conv, x in zip(self.convs, inputs, strict=True):
            y = conv(x)
            if y.shape[-2:] != size:
                y = F.interpolate(y, size=size, mode="bilinear", align_corners=False)
            out = y if out is None else out + y
        return out


class ChainedResidualPooling(nn.Module):
    """Fig. 2d: ReLU, then a chain of (5x5 max pool stride 1 - 3x3 conv) blocks, each block's
    output added to the running sum (the figure shows two blocks). The convolutions start at
    zero (CRP starts as the ReLU alone): a He-initialised chain triples the signal per
    RefineNet block."""

    def __init__(self, channels: int, num_blocks: int = 2) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(
            nn.Sequential(nn.MaxPool2d(5, stride=1, padding=2), conv3x3(channels, channels, bias=False))
            for _ in range(num_blocks)
        )
        for block in self.blocks:  # each residual path starts at zero, as the RCU's (see there)
            nn.init.zeros_(block[1].weight)
            keep_init(block[1])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(x)
        out, path = x, x
        for block in self.blocks:
            path = block(path)
            out = out + path
        return out


class RefineNetBlock(nn.Module):
    """One RefineNet (Fig. 2a): two RCUs per input path, multi-resolution fusion (skipped for
    a single input), chained residual pooling, one output RCU."""

    def __init__(self, in_channels: Sequence[int], out_channels: int, crp_blocks: int = 2) -> None:
        super().__init__()
        self.adapt = nn.ModuleList(
            nn.Sequential(ResidualConvUnit(c), ResidualConvUnit(c)) for c in in_channels
        )
        self.fuse = MultiResolutionFusion(in_channels, out_channels) if len(in_channels) > 1 else None
        if self.fuse is None and in_channels[0] != out_channels:
            raise ValueError("a single-input RefineNet keeps its width")
        self.pool = ChainedResidualPooling(out_channels, crp_blocks)
        self.output = ResidualConvUnit(out_channels)

    def forward(self, inputs: Sequence[torch.Tensor]) -> torch.Tensor:
        adapted = [adapt(x) for adapt, x in zip(self.adapt, inputs, strict=True)]
        fused = self.fuse(adapted) if self.fuse is not None else adapted[0]
        return self.output(self.pool(fused))
