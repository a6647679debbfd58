"""DeepLab v3 and v3+.

- DeepLab v3: Chen, Papandreou, Schroff, Adam, "Rethinking Atrous Convolution for Semantic
  Image Segmentation", 2017. ResNet at output stride 16 (ASPP rates 6/12/18) or 8 (rates
  doubled), ASPP with batch norm and image-level pooling (Sec. 3.3), multi-grid (1, 2, 4) in
  block4 (Sec. 3.2), 1x1 classifier, bilinear upsampling to the input.
- DeepLab v3+: Chen, Zhu, Papandreou, Schroff, Adam, "Encoder-Decoder with Atrous Separable
  Convolution", ECCV 2018. The v3 encoder plus a decoder (Sec. 3.1): stride-4 features
  projected to 48 channels, concatenated with the x4-upsampled encoder output, two 3x3
  256-channel convolutions, 1x1 classifier, x4 upsampling. `separable=True` uses atrous
  depthwise-separable convolutions in ASPP and decoder; `backbone="xception65"` is timm's
  aligned Xception-65 (Sec. 3.2).

Deviations from the papers, as options: `multi_grid=None` turns multi-grid off;
`aspp_dropout` is the 0.1 dropout of the reference code (0 removes it).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from atrous.backbones import create_backbone
from atrous.layers import ASPP, conv_bn_relu, resize_like
from atrous.models.base import SegmentationModel
from atrous.models.registry import register_model

DEFAULT_BACKBONE = "resnet101"


def aspp_rates(output_stride: int) -> tuple[int, int, int]:
    """The paper's ASPP rates: (6, 12, 18) at output stride 16, doubled at 8."""
    if output_stride == 16:
        return (6, 12, 18)
    if output_stride == 8:
        return (12, 24, 36)
    if output_stride == 32:
        return (3, 6, 9)
    raise ValueError(f"output_stride must be 8, 16 or 32, got {output_stride}")


def _multi_grid_for(backbone: str, multi_grid: Sequence[int] | None) -> Sequence[int] | None:
    """Multi-grid applies to ResNet-style backbones (block4 of three units)."""
    if multi_grid is None:
        return None
    resnet_like = backbone.startswith(("resnet", "resnext", "seresnet", "seresnext", "wide_resnet"))
    return multi_grid if resnet_like else None


@register_model("deeplab_v3", "DeepLab v3 (Chen et al. 2017): ResNet, ASPP with image pooling, multi-grid, OS 16/8")
class DeepLabV3(SegmentationModel):
    """DeepLab v3: backbone -> ASPP -> 1x1 classifier (logits at the output stride)."""

    def __init__(
        self,
        num_classes: int,
        *,
        in_channels: int = 3,
        backbone: str | None = None,
        output_stride: int | None = None,
        pretrained_backbone: str | None = None,
        multi_grid: Sequence[int] | None = (1, 2, 4),
        aspp_channels: int = 256,
        aspp_dropout: float = 0.1,
        separable: bool = False,
    ) -> None:
        super().__init__(num_classes, in_channels)
        backbone = backbone or DEFAULT_BACKBONE
        output_stride = output_stride or 16
        self.divisor = output_stride
        self.backbone = create_backbone(
            backbone,
            in_channels=in_channels,
            output_stride=output_stride,
            multi_grid=_multi_grid_for(backbone, multi_grid),
            pretrained=pretrained_backbone,
        )
        self.aspp = ASPP(
            self.backbone.channels[-1],
            aspp_rates(output_stride),
            aspp_channels,
            separable=separable,
            dropout=aspp_dropout,
        )
        self.classifier = nn.Conv2d(aspp_channels, num_classes, 1)

    def segment(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        features = self.backbone(x)
        return {"out": self.classifier(self.aspp(features[-1]))}  # (N, K, H/os, W/os)


class DeepLabV3PlusDecoder(nn.Module):
    """v3+ decoder: low-level 1x1 projection to 48 channels, concat with the upsampled
    encoder output, two 3x3 256-channel conv-BN-ReLU (ECCV 2018, Sec. 3.1 and 4.1)."""

    def __init__(
        self,
        low_level_channels: int,
        encoder_channels: int,
        *,
        projection_channels: int = 48,
        channels: int = 256,
        separable: bool = False,
    ) -> None:
        super().__init__()
        self.project = conv_bn_relu(low_level_channels, projection_channels, 1)
        self.fuse = nn.Sequential(
            conv_bn_relu(encoder_channels + projection_channels, channels, 3, separable=separable),
            conv_bn_relu(channels, channels, 3, separable=separable),
        )

    def forward(self, encoded: torch.Tensor, low_level: torch.Tensor) -> torch.Tensor:
        low = self.project(low_level)  # (N, 48, H/4, W/4)
        return self.fuse(torch.cat([resize_like(encoded, low), low], dim=1))


@register_model("deeplab_v3plus", "DeepLab v3+ (Chen et al. ECCV 2018): v3 encoder + 48-ch low-level decoder")
class DeepLabV3Plus(SegmentationModel):
    """DeepLab v3+: the v3 encoder (ASPP on the deepest features) and the decoder on the
    stride-4 features; logits at stride 4."""

    def __init__(
        self,
        num_classes: int,
        *,
        in_channels: int = 3,
        backbone: str | None = None,
        output_stride: int | None = None,
        pretrained_backbone: str | None = None,
        multi_grid: Sequence[int] | None = (1, 2, 4),
        aspp_channels: int = 256,
        aspp_dropout: float = 0.1,
        separable: bool = False,
        low_level_channels: int = 48,
        decoder_channels: int = 256,
    ) -> None:
        super().__init__(num_classes, in_channels)
        backbone = backbone or DEFAULT_BACKBONE
        output_stride = output_stride or 16
        self.divisor = output_stride
        self.backbone = create_backbone(
            backbone,
            in_channels=in_channels,
            output_stride=output_stride,
            multi_grid=_multi_grid_for(backbone, multi_grid),
            pretrained=pretrained_backbone,
        )
        if 4 not in self.backbone.reductions:
            raise ValueError(f"backbone '{backbone}' has no stride-4 features for the v3+ decoder")
        self._low_level_index = self.backbone.reductions.index(4)
        self.aspp = ASPP(
            self.backbone.channels[-1],
            aspp_rates(output_stride),
            aspp_channels,
            separable=separable,
            dropout=aspp_dropout,
        )
        self.decoder = DeepLabV3PlusDecoder(
            self.backbone.channels[self._low_level_index],
            aspp_channels,
            projection_channels=low_level_channels,
            channels=decoder_channels,
            separable=separable,
        )
        self.classifier = nn.Conv2d(decoder_channels, num_classes, 1)

    def segment(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        features = self.backbone(x)
        encoded = self.aspp(features[-1])  # (N, 256, H/os, W/os)
        decoded = self.decoder(encoded, features[self._low_level_index])  # (N, 256, H/4, W/4)
        return {"out": self.classifier(decoded)}
