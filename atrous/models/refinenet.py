"""RefineNet: Lin, Milan, Shen, Reid, "RefineNet: Multi-Path Refinement Networks for
High-Resolution Semantic Segmentation", CVPR 2017.

The 4-cascaded RefineNet (Sec. 3.1, Fig. 2a / 3c) on a ResNet (default resnet101): the
features of the four stages (strides 4, 8, 16, 32) are first reduced by a 3x3 conv to 512
channels (stride 32) or 256 (others), as in the reference code; RefineNet-4 refines the
stride-32 path alone, each following RefineNet-m fuses the previous block's output with
the stride-(2^(m+1)) path: residual conv units, multi-resolution fusion, chained residual
pooling, output RCU (Sec. 3.2). The stride-4 output passes two more RCUs and a 1x1
classifier (dropout 0.5 before it, as in the reference code); logits at stride 4 are upsampled
bilinearly. The options are listed in the `Args:` of RefineNet.

Initialisation (the paper does not give it): the last convolution of every residual path
(RCU, CRP) starts at zero, so each block starts as the identity; the rest keeps PyTorch's
defaults (`init="he"` does not apply: without normalisation it makes the logits overshoot).
"""

from __future__ import annotations

import torch
from torch import nn

from atrous.backbones import create_backbone
from atrous.layers import RefineNetBlock, ResidualConvUnit, keep_init
from atrous.models.base import SegmentationModel
from atrous.models.registry import register_model


@register_model("refinenet", "RefineNet (Lin et al. CVPR 2017): 4-cascaded, RCU / fusion / chained residual pooling")
class RefineNet(SegmentationModel):
    """4-cascaded RefineNet (Lin et al., CVPR 2017, Sec. 3.1): ResNet stages at strides 4 to 32,
    refined coarse to fine; logits at stride 4.

    Args:
        backbone (str, default "resnet101"): a timm name with features at strides 4, 8, 16
            and 32; ResNet-101, as in the paper.
        output_stride (int, default 32): fixed: the backbone runs at full stride, RefineNet
            recovers the resolution; any other value is refused.
        channels (int, default 256): width of the stride-4, -8 and -16 paths and of the
            blocks that refine them; the stride-32 path is twice as wide (512), as in the
            reference code.
        crp_blocks (int, default 2): pooling blocks in each chained residual pooling, 2 as in
            Fig. 2d (Sec. 3.2).
        dropout (float, default 0.5): dropout before the 1x1 classifier, from the reference
            code, not in the paper.
    """

    def __init__(
        self,
        num_classes: int,
        *,
        in_channels: int = 3,
        backbone: str | None = None,
        output_stride: int | None = None,
        pretrained_backbone: str | None = None,
        channels: int = 256,
        crp_blocks: int = 2,
        dropout: float = 0.5,
    ) -> None:
        super().__init__(num_classes, in_channels)
        if output_stride not in (None, 32):
            raise ValueError("refinenet uses the backbone at full stride; leave output_stride unset")
        self.backbone = create_backbone(
            backbone or "resnet101",
            in_channels=in_channels,
            out_indices=(1, 2, 3, 4),  # strides 4, 8, 16, 32
            pretrained=pretrained_backbone,
        )
        self.divisor = 32
        widths = [channels, channels, channels, 2 * channels]  # strides 4, 8, 16, 32
        self.reduce = nn.ModuleList(
            nn.Conv2d(c, w, 3, padding=1, bias=False) for c, w in zip(self.backbone.channels, widths, strict=True)
        )
        # RefineNet-4 (stride 32 alone), then -3, -2, -1 (previous output + a finer path)
        self.refine = nn.ModuleList(
            [RefineNetBlock([widths[3]], widths[3], crp_blocks)]
            + [RefineNetBlock([widths[i], prev], widths[i], crp_blocks) for i, prev in ((2, widths[3]), (1, channels), (0, channels))]
        )
        self.classifier = nn.Sequential(
            ResidualConvUnit(channels),
            ResidualConvUnit(channels),
            nn.Dropout(dropout),
            nn.Conv2d(channels, num_classes, 1),
        )
        # no normalisation anywhere after the encoder: the blocks keep PyTorch's default
        # initialisation (with zero-started residual paths, atrous.layers.refinenet), which
        # starts at logits of std ~1; He's makes them ~3x larger and the first steps overshoot
        for module in (self.reduce, self.refine, self.classifier):
            keep_init(module)

    def segment(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        paths = [reduce(f) for reduce, f in zip(self.reduce, self.backbone(x), strict=True)]  # strides 4..32
        y = self.refine[0]([paths[3]])  # (N, 512, H/32, W/32)
        for block, path in zip(self.refine[1:], reversed(paths[:3]), strict=True):
            y = block([path, y])  # (N, 256, finer stride)
        return {"out": self.classifier(y)}  # (N, K, H/4, W/4)
