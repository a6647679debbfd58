"""U-Net (Ronneberger, Fischer, Brox, "U-Net: Convolutional Networks for Biomedical Image
Segmentation", MICCAI 2015, Sec. 2 and Fig. 1).

Default (`backbone=None`): the original network - four down steps of two 3x3 conv + ReLU
and 2x2 max pooling (64 -> 1024 channels), four up steps of a 2x2 up-convolution halving
the channels, concatenation with the skip, two 3x3 conv + ReLU, and a 1x1 classifier.
Deviation, made so that output size = input size as the contract asks: the 3x3
convolutions are padded (the paper's are unpadded and need overlap-tiling); `batch_norm`
(off by default, as in the paper) adds BN after every convolution; `dropout` (0.5) is the
drop-out "at the end of the contracting path" (Sec. 3).

With `backbone=<timm name>`: the encoder variant, smp-style - the backbone's features at
strides 2..32 as skips, decoder blocks of x2 nearest upsampling, concatenation and two
3x3 conv-BN-ReLU, with `decoder_channels` per block.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from atrous.backbones import create_backbone
from atrous.models.base import SegmentationModel
from atrous.models.registry import register_model


def double_conv(in_channels: int, out_channels: int, batch_norm: bool) -> nn.Sequential:
    """Two 3x3 convolutions, each followed by (BN and) ReLU."""
    layers: list[nn.Module] = []
    for channels in (in_channels, out_channels):
        layers.append(nn.Conv2d(channels, out_channels, 3, padding=1, bias=not batch_norm))
        if batch_norm:
            layers.append(nn.BatchNorm2d(out_channels))
        layers.append(nn.ReLU(inplace=True))
    return nn.Sequential(*layers)


class UpStep(nn.Module):
    """2x2 up-convolution halving the channels, concatenation with the skip, double conv."""

    def __init__(self, in_channels: int, out_channels: int, batch_norm: bool) -> None:
        super().__init__()
        self.up = nn.ConvTranspose2d(in_channels, out_channels, 2, stride=2)
        self.conv = double_conv(2 * out_channels, out_channels, batch_norm)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        return self.conv(torch.cat([skip, self.up(x)], dim=1))


class EncoderDecoderBlock(nn.Module):
    """x2 nearest upsampling, concatenation with the skip (if any), two conv-BN-ReLU."""

    def __init__(self, in_channels: int, skip_channels: int, out_channels: int) -> None:
        super().__init__()
        self.conv = double_conv(in_channels + skip_channels, out_channels, batch_norm=True)

    def forward(self, x: torch.Tensor, skip: torch.Tensor | None) -> torch.Tensor:
        x = F.interpolate(x, scale_factor=2, mode="nearest")
        if skip is not None:
            x = torch.cat([x, skip], dim=1)
        return self.conv(x)


@register_model("unet", "U-Net (Ronneberger et al. MICCAI 2015): original 64-1024 net, or any timm encoder")
class UNet(SegmentationModel):
    """U-Net (Ronneberger et al., MICCAI 2015): the original network (`backbone=None`) or the
    smp-style encoder variant on a timm backbone (see the module docstring).

    Args:
        backbone (str | None, default None): None builds the paper's network (Sec. 2, Fig. 1);
            a timm name with features at strides 2 to 32 builds the encoder variant, atrous'
            option, not in the paper.
        output_stride (int, default 16, or 32 with a backbone): fixed: four 2x2 poolings in
            the original (five strides in the encoder variant); any other value is refused.
        base_channels (int, default 64): width of the first level, doubled at each of the four
            down steps (64 -> 1024, Fig. 1). Original network only.
        batch_norm (bool, default False): batch norm after every convolution of the original
            network; off as in the paper (a deviation when on).
        dropout (float, default 0.5): channel-wise dropout at the end of the contracting path
            (Sec. 3); 0 removes it. Original network only.
        decoder_channels (Sequence[int], default (256, 128, 64, 32, 16)): widths of the five
            decoder blocks of the encoder variant (smp's); atrous' option, not in the paper.
    """

    def __init__(
        self,
        num_classes: int,
        *,
        in_channels: int = 3,
        backbone: str | None = None,
        output_stride: int | None = None,
        pretrained_backbone: str | None = None,
        base_channels: int = 64,
        batch_norm: bool = False,
        dropout: float = 0.5,
        decoder_channels: Sequence[int] = (256, 128, 64, 32, 16),
    ) -> None:
        super().__init__(num_classes, in_channels)
        if output_stride not in (None, 32 if backbone else 16):
            raise ValueError("unet keeps its encoder's full stride; leave output_stride unset")
        self.encoder_variant = backbone is not None
        if self.encoder_variant:
            self._build_encoder_variant(backbone, pretrained_backbone, decoder_channels)
        else:
            if pretrained_backbone is not None:
                raise ValueError("pretrained_backbone needs backbone=<timm name> for unet")
            self._build_original(base_channels, batch_norm, dropout)

    def _build_original(self, base: int, batch_norm: bool, dropout: float) -> None:
        widths = [base * 2**i for i in range(5)]  # 64, 128, 256, 512, 1024
        self.divisor = 16
        self.down = nn.ModuleList(
            [double_conv(self.in_channels, widths[0], batch_norm)]
            + [double_conv(widths[i - 1], widths[i], batch_norm) for i in range(1, 5)]
        )
        self.dropout = nn.Dropout2d(dropout) if dropout > 0 else nn.Identity()
        self.up = nn.ModuleList([UpStep(widths[i], widths[i - 1], batch_norm) for i in range(4, 0, -1)])
        self.classifier = nn.Conv2d(widths[0], self.num_classes, 1)

    def _build_encoder_variant(
        self, backbone: str, pretrained: str | None, decoder_channels: Sequence[int]
    ) -> None:
        self.divisor = 32
        self.encoder = create_backbone(
            backbone, in_channels=self.in_channels, output_stride=32, pretrained=pretrained
        )
        if self.encoder.reductions != [2, 4, 8, 16, 32]:
            raise ValueError(
                f"unet needs a backbone with features at strides 2..32, "
                f"'{backbone}' gives {self.encoder.reductions}"
            )
        if len(decoder_channels) != 5:
            raise ValueError(f"decoder_channels needs 5 values, got {list(decoder_channels)}")
        skips = self.encoder.channels[-2::-1] + [0]  # strides 16, 8, 4, 2, then none
        ins = [self.encoder.channels[-1], *decoder_channels[:-1]]
        self.blocks = nn.ModuleList(
            EncoderDecoderBlock(i, s, o) for i, s, o in zip(ins, skips, decoder_channels, strict=True)
        )
        self.classifier = nn.Conv2d(decoder_channels[-1], self.num_classes, 3, padding=1)

    def segment(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        if self.encoder_variant:
            return {"out": self._segment_encoder_variant(x)}
        skips = []
        for i, step in enumerate(self.down):
            x = step(x if i == 0 else F.max_pool2d(x, 2))
            skips.append(x)
        x = self.dropout(skips.pop())  # (N, 1024, H/16, W/16)
        for up in self.up:
            x = up(x, skips.pop())
        return {"out": self.classifier(x)}

    def _segment_encoder_variant(self, x: torch.Tensor) -> torch.Tensor:
        features = self.encoder(x)  # strides 2, 4, 8, 16, 32
        y = features[-1]
        skips: list[torch.Tensor | None] = [*features[-2::-1], None]
        for block, skip in zip(self.blocks, skips, strict=True):
            y = block(y, skip)
        return self.classifier(y)  # (N, K, H, W)
