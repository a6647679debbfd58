"""The LR-ASPP head of MobileNetV3 (Howard et al., ICCV 2019, Sec. 6.4, Fig. 10). Tensor
names match torchvision's `LRASPPHead` (cbr, scale, low_classifier, high_classifier)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class LRASPPHead(nn.Module):
    """high (N, C_high, H/16, W/16), low (N, C_low, H/8, W/8) -> logits (N, K, H/8, W/8).

    The high features pass a 1x1 conv-BN-ReLU to `inter_channels`, gated by a global-average
    pooling branch (1x1 conv, sigmoid) in the manner of squeeze-and-excitation, are
    upsampled to the low features' size and classified; the low features are classified by
    their own 1x1 conv; the two score maps are summed.
    """

    def __init__(self, low_channels: int, high_channels: int, num_classes: int, inter_channels: int = 128) -> None:
        super().__init__()
        self.cbr = nn.Sequential(
            nn.Conv2d(high_channels, inter_channels, 1, bias=False),
            nn.BatchNorm2d(inter_channels),
            nn.ReLU(inplace=True),
        )
        self.scale = nn.Sequential(
            nn.AdaptiveAvgPool2d(1),
            nn.Conv2d(high_channels, inter_channels, 1, bias=False),
            nn.Sigmoid(),
        )
        self.low_classifier = nn.Conv2d(low_channels, num_classes, 1)
        self.high_classifier = nn.Conv2d(inter_channels, num_classes, 1)

    def forward(self, high: torch.Tensor, low: torch.Tensor) -> torch.Tensor:
        gated = self.cbr(high) * self.scale(high)  # (N, inter, H/16, W/16)
        gated = F.interpolate(gated, size=low.shape[-2:], mode="bilinear", align_corners=False)
        return self.low_classifier(low) + self.high_classifier(gated)
