"""The DeepLab family: v1 (LargeFOV), v2 (ASPP-L), v3 and v3+.

- DeepLab v1: Chen, Papandreou, Kokkinos, Murphy, Yuille, "Semantic Image Segmentation with
  Deep Convolutional Nets and Fully Connected CRFs", ICLR 2015, Sec. 3.1 and 4.1: VGG16 whose
  pools are 3x3 / stride 2 / pad 1, pool4 and pool5 at stride 1, conv5 at dilation 2, fc6
  dilated, fc7 1x1 (dropout 0.5 after each), fc8 1x1; output stride 8, bilinear upsampling of
  the logits (the CRF is atrous.crf's business). Table 2's networks are variants: LargeFOV
  (the default: fc6 3x3 at rate 12, 1024 channels, 20.5M parameters for 21 classes), 7x7 and
  4x4 (4096 channels); `msc=True` adds DeepLab-MSc's multi-scale MLPs.
- DeepLab v2: Chen, Papandreou, Kokkinos, Murphy, Yuille, "DeepLab: Semantic Image
  Segmentation with Deep Convolutional Nets, Atrous Convolution, and Fully Connected CRFs",
  TPAMI 2017. ResNet-101 at output stride 8 (Sec. 3.1, 4.1), ASPP-L (Sec. 3.3): four 3x3
  classifiers at rates 6/12/18/24 whose score maps are summed; with `backbone="vgg16"` the
  VGG16 form (Fig. 7), each branch fc6 (3x3, 1024) - fc7 (1x1, 1024) - fc8. `input_scales=(1, 0.75, 0.5)`
  is the paper's multi-scale input ("MSC", Sec. 4.1): one shared network per scale, the
  scores fused by the pixel-wise maximum, and in training every scale's scores supervised
  too (aux keys "scale_1", "scale_0.75", "scale_0.5", weight 1). Deviation: timm's ResNet
  puts the stride in the 3x3 conv (torchvision style) where the Caffe ResNet-101 puts it
  in the first 1x1 conv.
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

Deviations from the v3/v3+ papers (multi-grid off, the reference code's ASPP dropout) and
the layout of torchvision's DeepLabV3 (see atrous.from_torchvision) are options, listed in
the `Args:` of DeepLabV3 and DeepLabV3Plus.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

from atrous.backbones import VGG16, Backbone, cascaded_blocks, create_backbone
from atrous.layers import (
    ASPP,
    ASPPSum,
    ConvBNReLU,
    FCNHead,
    SummedBranches,
    conv_bn_relu,
    resize_like,
)
from atrous.models.base import SegmentationModel
from atrous.models.fcn import VGG_BACKBONES, vgg_fc_as_conv
from atrous.models.multiscale import run_at_scales, scale_key
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


# DeepLab v1's named networks (Chen et al. ICLR 2015, Table 2): fc6 kernel, fc6 rate ("input
# stride"), width of fc6 and fc7; parameters for 21 classes in the last comment
DEEPLAB_V1_VARIANTS: dict[str, tuple[int, int, int]] = {
    "largefov": (3, 12, 1024),  # DeepLab-CRF-LargeFOV: RF 224, 20.5M
    "7x7": (7, 4, 4096),  # DeepLab-CRF-7x7: RF 224, 134.3M
    "4x4": (4, 8, 4096),  # DeepLab-CRF-4x4: RF 224, 65.1M
    "4x4_rate4": (4, 4, 4096),  # DeepLab-CRF (the first row): RF 128, 65.1M
}
MSC_TAPS = (None, 0, 1, 2, 3)  # DeepLab-MSc: the input and pool1 ... pool4


def msc_branch(in_channels: int, stride: int, channels: int, dropout: float) -> nn.Sequential:
    """DeepLab-MSc's two-layer MLP on one tap (Sec. 4.1, "Multi-scale features"): 3x3 conv
    (`channels`, strided down to the score map's stride) - ReLU - dropout - 1x1 conv
    (`channels`) - ReLU - dropout."""
    return nn.Sequential(
        nn.Conv2d(in_channels, channels, 3, stride=stride, padding=1),
        nn.ReLU(inplace=True),
        nn.Dropout(dropout),
        nn.Conv2d(channels, channels, 1),
        nn.ReLU(inplace=True),
        nn.Dropout(dropout),
    )


@register_model("deeplab_v1", "DeepLab v1 (Chen et al. ICLR 2015): VGG16, OS 8, LargeFOV / 7x7 / 4x4, optional MSc")
class DeepLabV1(SegmentationModel):
    """DeepLab v1 (ICLR 2015, Sec. 3.1, 4.1): dilated VGG16 -> fc6/fc7 -> fc8 at stride 8.

    The paper's named networks (Table 2) are `variant`s: "largefov" (DeepLab-CRF-LargeFOV,
    the default: fc6 3x3 at rate 12, 1024 channels, 20.5M parameters), "7x7" (fc6 7x7 at rate
    4, 4096 channels, 134.3M), "4x4" (4x4 at rate 8, 4096, 65.1M) and "4x4_rate4" (4x4 at rate
    4, 4096, 65.1M: the table's plain "DeepLab-CRF", receptive field 128). `msc=True` is
    DeepLab-MSc (Sec. 4.1): two-layer 128-channel MLPs on the input and on pool1 ... pool4,
    their features concatenated to fc7's before fc8 (5 x 128 = 640 more channels), which is
    adding each MLP's scores to the final ones.

    Training: the paper computes the loss on the ground truth subsampled by 8, the score
    map's stride (Sec. 4.1); `atrous train --loss-stride 8` does that, the default (1) scores
    the logits upsampled to the input, as every atrous model.

    Args:
        backbone (str, default "vgg16"): "vgg16", the paper's ImageNet VGG16, or "vgg16_bn"
            (VGG16 with batch norm; atrous' option, not in the paper). No other backbone.
        output_stride (int, default 8): stride of the fc8 logits; 8 is the paper's (pool4 and
            pool5 at stride 1, conv5 at dilation 2, Sec. 3.1); 16 or 32 is atrous' option.
        variant (str, default "largefov"): one of Table 2's networks: "largefov", "7x7",
            "4x4", "4x4_rate4"; sets the three options below unless they are given.
        fc6_kernel (int | None, default None): fc6's kernel size (None: the variant's).
        fc6_dilation (int | None, default None): fc6's rate, the paper's "input stride"
            (None: the variant's; 12 for LargeFOV).
        fc_channels (int | None, default None): width of fc6 and fc7 (None: the variant's).
        msc (bool, default False): DeepLab-MSc's multi-scale MLPs on the input and pool1-4
            (Sec. 4.1).
        msc_channels (int, default 128): width of each MSc MLP, the paper's 128.
        dropout (float, default 0.5): dropout after fc6 and after fc7 (and in the MSc MLPs),
            as in VGG16's classifier that fc6 / fc7 come from.
    """

    def __init__(
        self,
        num_classes: int,
        *,
        in_channels: int = 3,
        backbone: str | None = None,
        output_stride: int | None = None,
        pretrained_backbone: str | None = None,
        variant: str = "largefov",
        fc6_kernel: int | None = None,
        fc6_dilation: int | None = None,
        fc_channels: int | None = None,
        msc: bool = False,
        msc_channels: int = 128,
        dropout: float = 0.5,
    ) -> None:
        super().__init__(num_classes, in_channels)
        backbone = backbone or "vgg16"
        if backbone not in VGG_BACKBONES:
            raise ValueError(f"deeplab_v1 is built on vgg16 or vgg16_bn, not '{backbone}'")
        if variant not in DEEPLAB_V1_VARIANTS:
            raise ValueError(f"deeplab_v1 variant must be one of {', '.join(DEEPLAB_V1_VARIANTS)}, got '{variant}'")
        kernel, dilation, width = DEEPLAB_V1_VARIANTS[variant]
        kernel, dilation, width = fc6_kernel or kernel, fc6_dilation or dilation, fc_channels or width
        self.backbone = VGG16(
            batch_norm=backbone == "vgg16_bn",
            in_channels=in_channels,
            output_stride=output_stride or 8,
            out_indices=(0, 1, 2, 3, 4) if msc else (4,),
            pool_kernel=3,
            pretrained=pretrained_backbone,
        )
        self.divisor = self.backbone.output_stride
        self.fc = vgg_fc_as_conv(512, width, kernel, dropout, dilation=dilation)
        self.msc = None
        if msc:  # one MLP per tap, each strided to the score map's stride
            taps = [(in_channels, 1)] + list(zip(self.backbone.channels[:4], self.backbone.reductions[:4], strict=True))
            self.msc = nn.ModuleList(
                msc_branch(c, self.divisor // reduction, msc_channels, dropout) for c, reduction in taps
            )
        self.feature_channels = width + (len(MSC_TAPS) * msc_channels if msc else 0)
        self.classifier = nn.Conv2d(self.feature_channels, num_classes, 1)  # fc8

    def features_and_logits(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """fc7 features (N, C, H/8, W/8; with MSc the MLPs' 640 channels after fc7's) and the
        logits (N, K, H/8, W/8)."""
        pools = self.backbone(x)
        features = self.fc(pools[-1])
        if self.msc is not None:
            taps = [x, *pools[:4]]
            features = torch.cat([features, *(branch(t) for branch, t in zip(self.msc, taps, strict=True))], dim=1)
        return features, self.classifier(features)

    def segment(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"out": self.features_and_logits(x)[1]}


@register_model("deeplab_v2", "DeepLab v2 (Chen et al. TPAMI 2017): ResNet-101 OS 8, ASPP-L, optional MSC")
class DeepLabV2(SegmentationModel):
    """DeepLab v2 (TPAMI 2017, Sec. 3.3, 4.1): dilated ResNet -> ASPP-L, logits at stride 8.

    Args:
        backbone (str, default "resnet101"): a timm name; ResNet-101 is the paper's (Sec. 4.1),
            timm's with the stride in the 3x3 conv (a deviation, see the module docstring).
            "vgg16" (or "vgg16_bn") is the paper's VGG16 form (Sec. 3.3, Fig. 7; Table 3):
            DeepLab v1's dilated VGG16 (3x3 pools, pool4/pool5 at stride 1, conv5 at rate 2),
            each ASPP branch fc6 (3x3 at its rate, 1024) - fc7 (1x1, 1024) - fc8, summed.
        output_stride (int, default 8): stride of the backbone features and logits; 8 is the
            paper's (Sec. 4.1); 16 or 32 is atrous' option.
        rates (Sequence[int], default (6, 12, 18, 24)): one branch per rate, their score maps
            summed: (6, 12, 18, 24) is ASPP-L, (2, 4, 8, 12) ASPP-S (Sec. 4.1); on a ResNet
            each branch is a single 3x3 classifier, as in the reference prototxt.
        input_scales (Sequence[float] | None, default None): None runs at a single scale;
            the paper's multi-scale input "MSC" is (1, 0.75, 0.5) (Sec. 4.1): shared weights,
            scores max-fused, each scale's scores also supervised in training (aux keys
            "scale_<s>", weight 1); the first scale sets the output size.
    """

    def __init__(
        self,
        num_classes: int,
        *,
        in_channels: int = 3,
        backbone: str | None = None,
        output_stride: int | None = None,
        pretrained_backbone: str | None = None,
        rates: Sequence[int] = (6, 12, 18, 24),
        input_scales: Sequence[float] | None = None,
    ) -> None:
        super().__init__(num_classes, in_channels)
        if backbone in VGG_BACKBONES:  # the VGG16 form (Fig. 7)
            self.backbone = VGG16(batch_norm=backbone == "vgg16_bn", in_channels=in_channels,
                                  output_stride=output_stride or 8, out_indices=(4,), pool_kernel=3,
                                  pretrained=pretrained_backbone)
        else:
            self.backbone = create_backbone(
                backbone or DEFAULT_BACKBONE,
                in_channels=in_channels,
                output_stride=output_stride or 8,
                pretrained=pretrained_backbone,
            )
        self.divisor = self.backbone.output_stride
        self.feature_channels = self.backbone.channels[-1]
        if backbone in VGG_BACKBONES:  # per rate DeepLab v1's head: fc6 (3x3 at the rate) - fc7 - fc8
            self.aspp = SummedBranches([
                nn.Sequential(vgg_fc_as_conv(self.feature_channels, 1024, 3, 0.5, dilation=rate),
                              nn.Conv2d(1024, num_classes, 1))
                for rate in rates
            ])
        else:
            self.aspp = ASPPSum(self.feature_channels, num_classes, rates)
        self.input_scales = tuple(input_scales) if input_scales else (1.0,)
        if len(self.input_scales) > 1:
            self.aux_weights = {scale_key(s): 1.0 for s in self.input_scales}

    def features_and_logits(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The deepest backbone features (N, 2048, H/8, W/8) and the logits (N, K, H/8, W/8)."""
        features = self.backbone(x)[-1]
        return features, self.aspp(features)

    def segment(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        if len(self.input_scales) == 1:
            return {"out": self.features_and_logits(x)[1]}
        per_scale = run_at_scales(
            lambda inp: (self.features_and_logits(inp)[1],), x, self.input_scales, self.divisor
        )
        logits = [maps[0] for maps in per_scale]  # each (N, K, H/8, W/8)
        outputs = {"out": torch.stack(logits).amax(dim=0)}
        if self.training:
            outputs.update({scale_key(s): lg for s, lg in zip(self.input_scales, logits, strict=True)})
        return outputs


def deeplab_encoder(
    backbone: str | None,
    in_channels: int,
    output_stride: int,
    pretrained: str | None,
    multi_grid: Sequence[int] | None,
    aspp_channels: int,
    aspp_dropout: float,
    separable: bool,
    rates: Sequence[int] | None = None,
    backbone_options: Mapping[str, Any] | None = None,
) -> tuple[Backbone, ASPP]:
    """The DeepLab v3 encoder shared by v3 and v3+: a backbone at `output_stride` (with
    multi-grid on ResNets) and ASPP at `rates`, by default the paper's for that stride."""
    backbone = backbone or DEFAULT_BACKBONE
    features = create_backbone(
        backbone,
        in_channels=in_channels,
        output_stride=output_stride,
        multi_grid=_multi_grid_for(backbone, multi_grid),
        pretrained=pretrained,
        **dict(backbone_options or {}),
    )
    rates = tuple(rates) if rates else aspp_rates(output_stride)
    aspp = ASPP(features.channels[-1], rates, aspp_channels, separable=separable, dropout=aspp_dropout)
    return features, aspp


@register_model("deeplab_v3", "DeepLab v3 (Chen et al. 2017): ResNet, ASPP with image pooling, multi-grid, OS 16/8")
class DeepLabV3(SegmentationModel):
    """DeepLab v3: backbone -> ASPP -> 1x1 classifier (logits at the output stride).

    Chen et al. 2017 ("Rethinking Atrous Convolution"); `head_conv`, `aux_head`, `rates`,
    `pad_input` and `backbone_options` reproduce torchvision's DeepLabV3 (see
    atrous.from_torchvision) and are not in the paper.

    Args:
        backbone (str, default "resnet101"): a timm name; the paper uses ResNet-50 and
            ResNet-101. Multi-grid applies to ResNet-style backbones only.
        output_stride (int, default 16): stride of the backbone features: 16, or 8 with the
            ASPP rates doubled (Chen et al. 2017, Sec. 3.3); 32 (rates 3, 6, 9) is atrous'
            option, not in the paper.
        multi_grid (Sequence[int] | None, default (1, 2, 4)): unit rates of the last stage's
            blocks, multiplied by its dilation (Chen et al. 2017, Sec. 3.2); ignored for
            backbones that are not ResNet-style; None turns multi-grid off (a deviation).
        aspp_channels (int, default 256): width of every ASPP branch and of its 1x1 projection
            (Chen et al. 2017, Sec. 3.3).
        aspp_dropout (float, default 0.1): dropout after ASPP's projection, from the reference
            code, not in the paper; 0 removes it.
        separable (bool, default False): atrous depthwise-separable 3x3 convolutions in ASPP,
            from DeepLab v3+ (Chen et al. 2018, Sec. 3.1); not in the v3 paper.
        head_conv (bool, default False): torchvision's 3x3 conv-BN-ReLU (aspp_channels wide)
            between ASPP and the classifier; not in the paper.
        aux_head (bool, default False): torchvision's auxiliary FCN head on the features
            before the deepest (ResNet layer3), loss weight 0.5 in training; not in the paper.
        rates (Sequence[int] | None, default None): ASPP's 3x3 rates; None is the paper's for
            the output stride (6, 12, 18 at 16, doubled at 8; Sec. 3.3); torchvision's
            MobileNetV3 model keeps 12, 24, 36 at output stride 16.
        pad_input (bool, default True): zero-pads the input to a multiple of the output stride
            (logits cropped back), as every atrous model; False runs on the image as it is,
            as torchvision does. atrous' option, not in the paper.
        backbone_options (Mapping[str, Any] | None, default None): keyword arguments for the
            backbone (atrous.backbones.TimmBackbone); atrous' option, not in the paper.
        cascade_blocks (int, default 0): copies of block4 cascaded after it, "going deeper"
            (Chen et al. 2017, Sec. 3.2, Fig. 3): block5, block6, ... at rates doubling from
            block4's (2 at output stride 16: block5-7 at 4, 8, 16), each unit times its
            multi-grid rate; the paper's cascaded model has 3 (block7) and `aspp=False`
            (Table 2 and 3). ResNet-style backbones only.
        aspp (bool, default True): ASPP before the classifier (Sec. 3.3); False puts the 1x1
            classifier on the deepest block, the cascaded model of Sec. 3.2.
    """

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
        head_conv: bool = False,
        aux_head: bool = False,
        rates: Sequence[int] | None = None,
        pad_input: bool = True,
        backbone_options: Mapping[str, Any] | None = None,
        cascade_blocks: int = 0,
        aspp: bool = True,
    ) -> None:
        super().__init__(num_classes, in_channels)
        output_stride = output_stride or 16
        if cascade_blocks < 0:
            raise ValueError(f"cascade_blocks must be 0 or more, got {cascade_blocks}")
        if head_conv and not aspp:
            raise ValueError("head_conv follows ASPP; it needs aspp=True")
        self.backbone, self.aspp = deeplab_encoder(
            backbone, in_channels, output_stride, pretrained_backbone, multi_grid, aspp_channels, aspp_dropout,
            separable, rates, backbone_options,
        )
        self.cascade = nn.Identity()
        if cascade_blocks:
            self.cascade = cascaded_blocks(self.backbone, cascade_blocks, 32 // output_stride,
                                           _multi_grid_for(backbone or DEFAULT_BACKBONE, multi_grid))
        width = aspp_channels
        if not aspp:
            self.aspp, width = nn.Identity(), self.backbone.channels[-1]
        self.divisor = output_stride if pad_input else 1
        self.head_conv = ConvBNReLU(aspp_channels, aspp_channels) if head_conv else nn.Identity()
        self.classifier = nn.Conv2d(width, num_classes, 1)
        if aux_head:
            self.aux_head = FCNHead(self.backbone.channels[-2], num_classes)
            self.aux_weights["aux"] = 0.5

    def segment(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        features = self.backbone(x)
        deepest = self.cascade(features[-1])  # block4, or block7 when cascaded
        outputs = {"out": self.classifier(self.head_conv(self.aspp(deepest)))}
        if self.training and "aux" in self.aux_weights:
            outputs["aux"] = self.aux_head(features[-2])  # ResNet: layer3, at stride 16 or 8
        return outputs


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
    stride-4 features; logits at stride 4.

    Args:
        backbone (str, default "resnet101"): a timm name with stride-4 features;
            "xception65" is timm's aligned Xception-65 (Chen et al. 2018, Sec. 3.2).
        output_stride (int, default 16): stride of the encoder output, 16 or 8, with the
            ASPP rates of DeepLab v3 (6, 12, 18 at 16, doubled at 8; Chen et al. 2017,
            Sec. 3.3); 32 (rates 3, 6, 9) is atrous' option, not in the paper.
        multi_grid (Sequence[int] | None, default (1, 2, 4)): multi-grid unit rates of the
            last stage, as in v3 (Chen et al. 2017, Sec. 3.2); ResNet-style backbones only;
            None turns multi-grid off (a deviation).
        aspp_channels (int, default 256): width of every ASPP branch and of its projection,
            the encoder's output (Chen et al. 2017, Sec. 3.3).
        aspp_dropout (float, default 0.1): dropout after ASPP's projection, from the reference
            code, not in the paper; 0 removes it.
        separable (bool, default False): atrous depthwise-separable 3x3 convolutions in ASPP
            and decoder (Chen et al. 2018, Sec. 3.1).
        low_level_channels (int, default 48): the 1x1 projection of the stride-4 features
            (Chen et al. 2018, Sec. 4.1).
        decoder_channels (int, default 256): width of the decoder's two 3x3 convolutions
            (Chen et al. 2018, Sec. 4.1).
    """

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
        self.divisor = output_stride or 16
        self.backbone, self.aspp = deeplab_encoder(
            backbone, in_channels, self.divisor, pretrained_backbone, multi_grid, aspp_channels, aspp_dropout, separable
        )
        if 4 not in self.backbone.reductions:
            raise ValueError(f"backbone '{backbone}' has no stride-4 features for the v3+ decoder")
        self._low_level_index = self.backbone.reductions.index(4)
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
