"""Convolution blocks: conv-BN-ReLU, the depthwise-separable convolution of DeepLab v3+, and a
convolution whose bias is added after it (a torch bf16 kernel fault worked around)."""

from __future__ import annotations

import torch
from torch import nn


class BiasAfterConv2d(nn.Conv2d):
    """nn.Conv2d (same parameters, state dict and fp32 result) whose bias is added after the
    convolution instead of inside its kernel. Under CPU bf16 autocast, torch 2.14's oneDNN
    kernel for the weight gradient of a biased convolution with thousands of input channels
    and few outputs (FCN's score_fr, 4096 -> 11 or 2) corrupts the heap on AMX CPUs
    ("free(): invalid next size"); the same convolution without its bias is sound. Under
    autocast the bias is added in fp32."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self._conv_forward(x, self.weight, None)
        return out if self.bias is None else out + self.bias.view(1, -1, 1, 1)


class ConvBNReLU(nn.Sequential):
    """3x3 (or kxk) convolution, batch norm, ReLU; padding keeps the size at stride 1."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int = 3,
        *,
        stride: int = 1,
        dilation: int = 1,
        batch_norm: bool = True,
    ) -> None:
        padding = dilation * (kernel_size - 1) // 2
        layers: list[nn.Module] = [
            nn.Conv2d(
                in_channels,
                out_channels,
                kernel_size,
                stride=stride,
                padding=padding,
                dilation=dilation,
                bias=not batch_norm,
            )
        ]
        if batch_norm:
            layers.append(nn.BatchNorm2d(out_channels))
        layers.append(nn.ReLU(inplace=True))
        super().__init__(*layers)


class SeparableConv2d(nn.Sequential):
    """Atrous depthwise-separable convolution (Chen et al., ECCV 2018, Sec. 3.1).

    Depthwise kxk (with dilation) -> BN -> ReLU -> pointwise 1x1 -> BN -> ReLU, as in the
    reference DeepLab v3+ implementation of ASPP and decoder ("separable_conv2d").
    """

    def __init__(
        self, in_channels: int, out_channels: int, kernel_size: int = 3, *, dilation: int = 1
    ) -> None:
        padding = dilation * (kernel_size - 1) // 2
        super().__init__(
            nn.Conv2d(
                in_channels,
                in_channels,
                kernel_size,
                padding=padding,
                dilation=dilation,
                groups=in_channels,
                bias=False,
            ),
            nn.BatchNorm2d(in_channels),
            nn.ReLU(inplace=True),
            nn.Conv2d(in_channels, out_channels, 1, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
        )


def conv_bn_relu(
    in_channels: int, out_channels: int, kernel_size: int = 3, *, dilation: int = 1, separable: bool = False
) -> nn.Module:
    """A conv-BN-ReLU block, separable (depthwise + pointwise) when asked and kernel > 1."""
    if separable and kernel_size > 1:
        return SeparableConv2d(in_channels, out_channels, kernel_size, dilation=dilation)
    return ConvBNReLU(in_channels, out_channels, kernel_size, dilation=dilation)
