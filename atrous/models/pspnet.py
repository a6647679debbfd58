"""PSPNet: Zhao, Shi, Qi, Wang, Jia, "Pyramid Scene Parsing Network", CVPR 2017.

A dilated ResNet at output stride 8 (Sec. 3.2), the pyramid pooling module with bins
(1, 2, 3, 6) each reduced to 1/4 of the channels and concatenated with the features
(Sec. 3.2, Fig. 3), then 3x3 conv (512) - BN - ReLU - dropout 0.1 - 1x1 classifier as in the
reference code, and bilinear upsampling. In training an auxiliary FCN head on the stage-3
(res4b22 / layer3) features adds its loss with weight 0.4 (Sec. 3.3, Fig. 4).

Default backbone: resnet101 (the paper's VOC / Cityscapes networks; its ablation uses
resnet50). Deviation: the paper's ResNet has a deep 3-conv stem; pass
`backbone="resnet101d"` for timm's deep-stem ResNet (which also average-pools its
shortcuts). Upsampling inside the pyramid uses align_corners=False (the Caffe "interp"
layer aligns corners).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from atrous.backbones import create_backbone
from atrous.layers import FCNHead, PyramidPooling
from atrous.models.base import SegmentationModel
from atrous.models.registry import register_model


@register_model("pspnet", "PSPNet (Zhao et al. CVPR 2017): dilated ResNet OS 8, pyramid pooling 1/2/3/6, aux 0.4")
class PSPNet(SegmentationModel):
    """PSPNet (Zhao et al., CVPR 2017): dilated ResNet -> pyramid pooling -> FCN head.

    Args:
        backbone (str, default "resnet101"): a timm name; ResNet-101 is the paper's for VOC
            and Cityscapes (ResNet-50 in its ablation); "resnet101d" has the paper's deep stem.
        output_stride (int, default 8): stride of the features, the paper's 8 (dilated
            network, Sec. 3.2); 16 or 32 is atrous' option.
        bins (Sequence[int], default (1, 2, 3, 6)): pyramid levels, each pooled to bins x bins
            and reduced to 1/len(bins) of the channels (Sec. 3.2, Fig. 3).
        aux_weight (float, default 0.4): loss weight of the auxiliary FCN head on the stage-3
            (layer3) features, the paper's deep supervision (Fig. 4) and its weight 0.4; 0
            drops the auxiliary head.
        dropout (float, default 0.1): dropout in the main and auxiliary heads, from the
            reference code, not in the paper.
    """

    def __init__(
        self,
        num_classes: int,
        *,
        in_channels: int = 3,
        backbone: str | None = None,
        output_stride: int | None = None,
        pretrained_backbone: str | None = None,
        bins: Sequence[int] = (1, 2, 3, 6),
        aux_weight: float = 0.4,
        dropout: float = 0.1,
    ) -> None:
        super().__init__(num_classes, in_channels)
        self.backbone = create_backbone(
            backbone or "resnet101",
            in_channels=in_channels,
            output_stride=output_stride or 8,
            out_indices=(3, 4),  # layer3 (aux), layer4
            pretrained=pretrained_backbone,
        )
        self.divisor = self.backbone.output_stride
        deep = self.backbone.channels[-1]
        self.pyramid = PyramidPooling(deep, bins)
        self.head = FCNHead(self.pyramid.out_channels, num_classes, hidden=512, dropout=dropout)
        if aux_weight > 0:
            self.aux_head = FCNHead(self.backbone.channels[0], num_classes, dropout=dropout)
            self.aux_weights["aux"] = aux_weight

    def segment(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        stage3, stage4 = self.backbone(x)  # (N, 1024, H/8, W/8), (N, 2048, H/8, W/8)
        outputs = {"out": self.head(self.pyramid(stage4))}
        if self.training and "aux" in self.aux_weights:
            outputs["aux"] = self.aux_head(stage3)
        return outputs
