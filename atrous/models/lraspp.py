"""LR-ASPP: Howard, Sandler, Chu, Chen, Chen, Tan, Wang, Zhu, Pang, Vasudevan, Le, Adam,
"Searching for MobileNetV3", ICCV 2019, Sec. 6.4 and Fig. 10.

MobileNetV3-Large (timm's `mobilenetv3_large_100`) with atrous convolution in its last
block, output stride 16; the Lite R-ASPP head (atrous.layers.LRASPPHead) on the last
features, 128 channels gated by a squeeze-and-excitation-like global pooling branch, plus a
1x1 classifier on the stride-8 features; the summed scores upsampled bilinearly to the input.

Deviation: the paper implements the pooling branch with "a large pooling kernel with a large
stride" (49x49, stride (16, 20) at Cityscapes' 1024x2048, i.e. close to global); here it is
the global average pool, as in torchvision, which takes any input size.

The options are listed in the `Args:` of LRASPP.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from atrous.backbones import create_backbone
from atrous.layers.lraspp import LRASPPHead
from atrous.models.base import SegmentationModel
from atrous.models.registry import register_model

DEFAULT_BACKBONE = "mobilenetv3_large_100"


@register_model("lraspp", "LR-ASPP (Howard et al. ICCV 2019): MobileNetV3-Large OS 16, gated 1x1 head + stride-8 scores")
class LRASPP(SegmentationModel):
    """Backbone -> LR-ASPP head on the deepest and the stride-8 features; logits at stride 8.

    Args:
        backbone (str, default "mobilenetv3_large_100"): a timm name with stride-8 features
            before the last; MobileNetV3-Large is the paper's (Sec. 6.4).
        output_stride (int, default 16): stride of the last features, the paper's 16 (atrous
            convolution in the last block, Sec. 6.4); 8 or 32 is atrous' option.
        inter_channels (int, default 128): width of the head's 1x1 conv-BN-ReLU and of its
            gating branch, the paper's 128 (Fig. 10).
        pad_input (bool, default True): zero-pads the input to a multiple of the output stride
            and crops back, as every atrous model; False runs on the image as it is, as
            torchvision does. atrous' option, not in the paper.
        backbone_options (Mapping[str, Any] | None, default None): keyword arguments for the
            backbone (atrous.backbones.TimmBackbone); atrous.from_torchvision uses them to
            reproduce torchvision's MobileNetV3 layout. atrous' option, not in the paper.
    """

    def __init__(
        self,
        num_classes: int,
        *,
        in_channels: int = 3,
        backbone: str | None = None,
        output_stride: int | None = None,
        pretrained_backbone: str | None = None,
        inter_channels: int = 128,
        pad_input: bool = True,
        backbone_options: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__(num_classes, in_channels)
        self.backbone = create_backbone(
            backbone or DEFAULT_BACKBONE,
            in_channels=in_channels,
            output_stride=output_stride or 16,
            pretrained=pretrained_backbone,
            **dict(backbone_options or {}),
        )
        reductions = self.backbone.reductions
        if 8 not in reductions[:-1]:
            raise ValueError(f"lraspp needs stride-8 features before the last ones; the backbone has {reductions}")
        self._low_index = len(reductions) - 2 - reductions[-2::-1].index(8)  # the deepest stride-8 features
        self.head = LRASPPHead(self.backbone.channels[self._low_index], self.backbone.channels[-1], num_classes,
                               inter_channels)
        self.divisor = self.backbone.output_stride if pad_input else 1

    def segment(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        features = self.backbone(x)
        return {"out": self.head(features[-1], features[self._low_index])}
