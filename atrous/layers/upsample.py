"""Upsampling helpers: bilinear-initialised transposed convolution (FCN) and resizing."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from atrous.layers.init import keep_init


def bilinear_kernel(channels: int, kernel_size: int) -> torch.Tensor:
    """Weights (channels, channels, k, k) that make a transposed conv a bilinear upsampler,
    one channel to the same channel (Long et al., CVPR 2015, Sec. 3.3)."""
    factor = (kernel_size + 1) // 2
    center = factor - 1 if kernel_size % 2 == 1 else factor - 0.5
    og = torch.arange(kernel_size, dtype=torch.float32)
    filt_1d = 1 - (og - center).abs() / factor
    filt = filt_1d[:, None] * filt_1d[None, :]
    weight = torch.zeros(channels, channels, kernel_size, kernel_size)
    weight[range(channels), range(channels)] = filt
    return weight


class BilinearConvTranspose2d(nn.ConvTranspose2d):
    """Transposed convolution upsampling by `scale`, initialised to bilinear interpolation."""

    def __init__(self, channels: int, scale: int, *, learnable: bool = True) -> None:
        kernel_size = 2 * scale
        super().__init__(channels, channels, kernel_size, stride=scale, padding=scale // 2, bias=False)
        with torch.no_grad():
            self.weight.copy_(bilinear_kernel(channels, kernel_size))
        self.weight.requires_grad_(learnable)
        keep_init(self)


def resize_like(x: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    """Bilinearly resize `x` to the spatial size of `ref` (no-op when they match)."""
    if x.shape[-2:] == ref.shape[-2:]:
        return x
    return F.interpolate(x, size=ref.shape[-2:], mode="bilinear", align_corners=False)
