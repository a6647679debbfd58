"""The "FCN head" of torchvision and the PSPNet reference code: 3x3 conv-BN-ReLU, dropout,
1x1 classifier. Its tensor names match torchvision's `FCNHead` (0: conv, 1: BN, 4: conv)."""

from __future__ import annotations

from torch import nn


class FCNHead(nn.Sequential):
    """(N, C, H, W) -> (N, num_classes, H, W); the hidden width is C/4 unless given."""

    def __init__(
        self, in_channels: int, num_classes: int, *, hidden: int | None = None, dropout: float = 0.1
    ) -> None:
        hidden = hidden or in_channels // 4
        super().__init__(
            nn.Conv2d(in_channels, hidden, 3, padding=1, bias=False),
            nn.BatchNorm2d(hidden),
            nn.ReLU(inplace=True),
            nn.Dropout(dropout),
            nn.Conv2d(hidden, num_classes, 1),
        )
