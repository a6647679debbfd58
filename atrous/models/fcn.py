"""Fully convolutional networks: FCN-32s, FCN-16s, FCN-8s.

Long, Shelhamer, Darrell, "Fully Convolutional Networks for Semantic Segmentation", CVPR
2015. VGG16 (Sec. 4.1) with fc6/fc7 turned into convolutions (7x7 4096, 1x1 4096, dropout
0.5, Sec. 3.1), a 1x1 score layer, and in-network upsampling by transposed convolutions
initialised to bilinear interpolation (Sec. 3.3). FCN-16s adds a 1x1 score layer on pool4
and FCN-8s also one on pool3, fused by summation with the x2-upsampled coarser scores
(Sec. 4.2, Fig. 3); the new score layers start at zero "so that the net starts with
unmodified predictions". As in the reference Caffe nets, the x2 upsamplings learn and the
final one (x32 / x16 / x8) stays fixed bilinear (`learn_final_upsampling=True` lets it learn).

Deviations, all forced by the any-size contract: no 100-pixel padding of conv1_1 and no
"crop" layers; instead the input is zero-padded to a multiple of 32 and fc6 is padded by 3
so that every score map keeps its stride exactly.

`backbone=<timm ResNet>` gives the torchvision-style FCN: the ResNet dilated to output
stride 8 (default), a head of 3x3 conv (C/4) - BN - ReLU - dropout 0.1 - 1x1 on layer4 and
bilinear upsampling of the logits; FCN-16s / FCN-8s add zero-initialised 1x1 score layers on
layer3 / layer2 (useful with `output_stride=32`, where the fusion upsamples x2 as in the
paper). `aux_head=True` adds torchvision's auxiliary FCN head on layer3 (loss weight 0.5);
`pad_input=False` (ResNet FCN-32s) runs on the image as it is instead of zero-padding it to
a multiple of the output stride, as torchvision does.
"""

from __future__ import annotations

import os
from collections import OrderedDict
from collections.abc import Mapping

import torch
from torch import nn

from atrous.backbones import VGG16, Backbone, create_backbone
from atrous.layers import BiasAfterConv2d, BilinearConvTranspose2d, FCNHead, keep_init
from atrous.models.base import SegmentationModel
from atrous.models.registry import register_model

VGG_BACKBONES = ("vgg16", "vgg16_bn")
# backbone feature indices: 2 = pool3 / layer2 (stride 8), 3 = pool4 / layer3, 4 = pool5 / layer4
FEATURE_INDICES = (2, 3, 4)


def vgg_fc_as_conv(
    in_channels: int = 512,
    width: int = 4096,
    kernel_size: int = 7,
    dropout: float = 0.5,
    dilation: int = 1,
) -> nn.Sequential:
    """fc6 (kxk, `width`, size-keeping padding) - ReLU - dropout - fc7 (1x1, `width`) - ReLU -
    dropout (Sec. 3.1; DeepLab v1 uses 3x3 at dilation 12 and width 1024)."""
    padding = dilation * (kernel_size - 1) // 2
    return nn.Sequential(
        OrderedDict(
            fc6=nn.Conv2d(in_channels, width, kernel_size, padding=padding, dilation=dilation),
            relu6=nn.ReLU(inplace=True),
            drop6=nn.Dropout(dropout),
            fc7=nn.Conv2d(width, width, 1),
            relu7=nn.ReLU(inplace=True),
            drop7=nn.Dropout(dropout),
        )
    )


def load_vgg16_classifier(fc: nn.Sequential, state_dict: Mapping[str, torch.Tensor]) -> None:
    """Copy torchvision's vgg16 `classifier.0` (4096 x 25088) into fc6 (4096 x 512 x 7 x 7)
    and `classifier.3` (4096 x 4096) into fc7 (4096 x 4096 x 1 x 1)."""
    fc6_weight = state_dict["classifier.0.weight"]  # (4096, 512 * 7 * 7)
    fc7_weight = state_dict["classifier.3.weight"]  # (4096, 4096)
    with torch.no_grad():
        fc.fc6.weight.copy_(fc6_weight.reshape(fc.fc6.weight.shape))
        fc.fc6.bias.copy_(state_dict["classifier.0.bias"])
        fc.fc7.weight.copy_(fc7_weight.reshape(fc.fc7.weight.shape))
        fc.fc7.bias.copy_(state_dict["classifier.3.bias"])


def read_state_dict(path: str) -> dict[str, torch.Tensor]:
    """A .safetensors or .pth state dict from a local file."""
    if path.endswith(".safetensors"):
        from safetensors.torch import load_file

        return load_file(path)
    return torch.load(path, map_location="cpu", weights_only=True)


def build_backbone(
    backbone: str, in_channels: int, output_stride: int, pretrained: str | None
) -> Backbone:
    """Features at strides 8, 16, 32 (or less when dilated): pool3-5 of VGG16, layer2-4 of a ResNet."""
    return create_backbone(
        backbone,
        in_channels=in_channels,
        output_stride=output_stride,
        out_indices=FEATURE_INDICES,
        pretrained=pretrained,
    )


class FCN(SegmentationModel):
    """FCN-32s, FCN-16s and FCN-8s (Long et al., CVPR 2015); one subclass per variant.

    - fcn32s (Sec. 4.1): scores from fc7 upsampled x32.
    - fcn16s (Sec. 4.2): fc7 scores x2 + pool4 scores, then x16.
    - fcn8s (Sec. 4.2): FCN-16s' fusion x2 + pool3 scores, then x8.

    Subclasses choose the skips: `skips` lists the feature indices whose score layers are
    fused, coarse to fine: () FCN-32s, (3,) FCN-16s, (3, 2) FCN-8s. All three take the same
    options.

    Args:
        backbone (str, default "vgg16"): "vgg16" is the paper's (Sec. 4.1), "vgg16_bn" atrous'
            option; a timm ResNet gives torchvision's FCN (dilated ResNet, FCN head, bilinear
            upsampling, skips on layer3 / layer2), not the paper's.
        output_stride (int, default 32 for VGG16, 8 for a ResNet): stride of the deepest
            features; VGG16's 32 is the paper's, a ResNet's 8 torchvision's (32 gives the
            paper's x2 fusions on a ResNet).
        pretrained_backbone (str | None, default None): with VGG16, fc6 / fc7 are loaded from its
            ImageNet classifier too, cast as convolutions (Sec. 3.1).
        dropout (float | None, default None): dropout in the head; None is 0.5 after fc6 and
            after fc7 on VGG16, kept from its classifier (Sec. 4.3), and 0.1 in the ResNet
            head (torchvision's).
        learn_final_upsampling (bool, default False): lets the final x32 / x16 / x8 transposed
            convolution learn; the paper keeps it fixed bilinear and learns only the x2
            upsamplings (Sec. 4.3). VGG16 only: the ResNet FCN upsamples bilinearly.
        aux_head (bool, default False): torchvision's auxiliary FCN head on layer3, loss weight
            0.5 in training; ResNet backbones only; not in the paper.
        pad_input (bool, default True): zero-pads the input to a multiple of the output
            stride (instead of the paper's 100-pixel padding and crops, see the module
            docstring); False runs on the image as it is, as torchvision does, for the ResNet
            FCN-32s only. atrous' option, not in the paper.
        extra_heads (Mapping[str, int] | None, default None): more score heads on the shared
            network, name -> classes, e.g. {"geometric": 3}: FCN's two-headed SIFT Flow net
            (Sec. 5, Table 6: "semantic and geometric prediction layers and losses"); each head
            has its own score_fr, skip score layers and upsamplings, the trunk up to fc7 (the
            backbone on a ResNet) is shared. `model(x, return_aux=True)[name]` holds its
            (N, classes, H, W) scores; `model(x)` stays the main head's. Their losses:
            `atrous.losses.multi_head.multi_head_loss`; `atrous train` does not train them
            (its items carry one label map).
    """

    skips: tuple[int, ...] = ()

    def __init__(
        self,
        num_classes: int,
        *,
        in_channels: int = 3,
        backbone: str | None = None,
        output_stride: int | None = None,
        pretrained_backbone: str | None = None,
        dropout: float | None = None,
        learn_final_upsampling: bool = False,
        aux_head: bool = False,
        pad_input: bool = True,
        extra_heads: Mapping[str, int] | None = None,
    ) -> None:
        super().__init__(num_classes, in_channels)
        backbone = backbone or "vgg16"
        self.vgg = backbone in VGG_BACKBONES
        output_stride = output_stride or (32 if self.vgg else 8)
        self.backbone = build_backbone(backbone, in_channels, output_stride, pretrained_backbone)
        if not pad_input and (self.vgg or self.skips):
            raise ValueError("pad_input=False is for the ResNet FCN-32s (torchvision's FCN); skips need aligned strides")
        self.divisor = self.backbone.output_stride if pad_input else 1
        if self.vgg:
            self.head = nn.Sequential(
                vgg_fc_as_conv(dropout=0.5 if dropout is None else dropout),
                BiasAfterConv2d(4096, num_classes, 1),  # score_fr (its bias outside: see the class)
            )
            if pretrained_backbone is not None:
                self._load_vgg_classifier(pretrained_backbone)
        else:
            self.head = FCNHead(self.backbone.channels[-1], num_classes, dropout=0.1 if dropout is None else dropout)
        self.score_skips = nn.ModuleList(self._score_layer(i) for i in self.skips)
        self.upsample_skips = nn.ModuleList(self._upsampler(i) for i in self.skips)
        self.upsample_final = self._final_upsampler(num_classes, learn_final_upsampling)
        self.extra_heads = nn.ModuleDict({name: self._extra_head(name, classes, dropout, learn_final_upsampling)
                                          for name, classes in dict(extra_heads or {}).items()})
        if aux_head:
            if self.vgg:
                raise ValueError("aux_head is the torchvision ResNet FCN's; VGG16 FCNs have none")
            self.aux_head = FCNHead(self.backbone.channels[1], num_classes)
            self.aux_weights["aux"] = 0.5

    def _final_upsampler(self, classes: int, learnable: bool) -> nn.Module:
        """VGG16: the paper's in-network x32 / x16 / x8 upsampling; ResNets use the base class' bilinear."""
        finest = self.backbone.reductions[(self.skips or (4,))[-1] - 2]
        return BilinearConvTranspose2d(classes, finest, learnable=learnable) if self.vgg else nn.Identity()

    def _extra_head(self, name: str, classes: int, dropout: float | None, learnable: bool) -> nn.Module:
        """Another head's score_fr (on fc7, or an FCN head on a ResNet), skip scores and upsamplings."""
        if name in ("out", "aux") or not isinstance(classes, int) or classes < 1:
            raise ValueError(f"extra_heads: '{name}' needs a name other than out / aux and a class count >= 1")
        head = nn.Module()
        head.score_fr = (BiasAfterConv2d(4096, classes, 1) if self.vgg
                         else FCNHead(self.backbone.channels[-1], classes, dropout=0.1 if dropout is None else dropout))
        head.score_skips = nn.ModuleList(self._score_layer(i, classes) for i in self.skips)
        head.upsample_skips = nn.ModuleList(self._upsampler(i, classes) for i in self.skips)
        head.upsample_final = self._final_upsampler(classes, learnable)
        return head

    def _score_layer(self, index: int, classes: int | None = None) -> nn.Conv2d:
        """A zero-initialised 1x1 score layer on the skip feature (Sec. 4.2)."""
        conv = nn.Conv2d(self.backbone.channels[index - 2], classes or self.num_classes, 1)
        nn.init.zeros_(conv.weight)
        nn.init.zeros_(conv.bias)
        return keep_init(conv)

    def _upsampler(self, index: int, classes: int | None = None) -> nn.Module:
        """Upsamples the fused scores so far to the stride of feature `index`."""
        position = self.skips.index(index)
        coarser = self.skips[position - 1] if position > 0 else 4
        ratio = self.backbone.reductions[coarser - 2] // self.backbone.reductions[index - 2]
        return BilinearConvTranspose2d(classes or self.num_classes, ratio) if ratio > 1 else nn.Identity()

    def _load_vgg_classifier(self, pretrained: str) -> None:
        if os.path.isfile(pretrained):
            state = read_state_dict(pretrained)
        else:  # a named source: torchvision's ImageNet weights
            from torchvision.models import VGG16_BN_Weights, VGG16_Weights

            bn = isinstance(self.backbone, VGG16) and self.backbone.batch_norm
            weights = VGG16_BN_Weights.IMAGENET1K_V1 if bn else VGG16_Weights.IMAGENET1K_V1
            state = weights.get_state_dict(progress=True)
        if "classifier.0.weight" in state:
            load_vgg16_classifier(self.head[0], state)
            keep_init(self.head[0])

    def _fuse(self, score: torch.Tensor, features: list[torch.Tensor], score_skips: nn.ModuleList,
              upsample_skips: nn.ModuleList) -> torch.Tensor:
        """The skips' scores added to the upsampled coarser scores, coarse to fine (Fig. 3)."""
        for index, score_layer, upsample in zip(self.skips, score_skips, upsample_skips, strict=True):
            score = upsample(score) + score_layer(features[index - 2])
        return score

    def segment(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        features = self.backbone(x)  # strides 8, 16, 32 (VGG16) or 8, 8, 8 (dilated ResNet)
        trunk = self.head[0](features[-1]) if self.vgg else features[-1]  # fc7 (N, 4096, H/32, W/32)
        score = self.head[1](trunk) if self.vgg else self.head(trunk)  # (N, K, H/32, W/32)
        outputs = {"out": self.upsample_final(self._fuse(score, features, self.score_skips, self.upsample_skips))}
        for name, head in self.extra_heads.items():  # e.g. SIFT Flow's geometric head
            fused = self._fuse(head.score_fr(trunk), features, head.score_skips, head.upsample_skips)
            outputs[name] = head.upsample_final(fused)
        if self.training and "aux" in self.aux_weights:
            outputs["aux"] = self.aux_head(features[1])
        return outputs


@register_model("fcn32s", "FCN-32s (Long et al. CVPR 2015): VGG16, fc6/fc7 as convs, x32 bilinear deconv")
class FCN32s(FCN):
    __doc__ = FCN.__doc__  # one docstring for the three variants (help() shows no inherited one)

    skips = ()


@register_model("fcn16s", "FCN-16s (Long et al. CVPR 2015): FCN-32s + pool4 scores, x16 deconv")
class FCN16s(FCN):
    __doc__ = FCN.__doc__

    skips = (3,)


@register_model("fcn8s", "FCN-8s (Long et al. CVPR 2015): FCN-16s + pool3 scores, x8 deconv")
class FCN8s(FCN):
    __doc__ = FCN.__doc__

    skips = (3, 2)
