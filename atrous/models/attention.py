"""Attention to scale: Chen, Yang, Wang, Xu, Yuille, "Attention to Scale: Scale-aware
Semantic Image Segmentation", CVPR 2016.

A base network (default DeepLab-LargeFOV, `deeplab_v1`) is run with shared weights on the
input at every scale (default 1 and 0.5, Sec. 3.1 / 4.1); its fc7 features, resized to the
scale-1 resolution and concatenated over scales, feed the attention model - 3x3 conv (512)
- ReLU - dropout 0.5 - 1x1 conv to one channel per scale (Sec. 3.3 and 4) - whose per-pixel
softmax over scales weights the sum of the per-scale logits (Eq. 2). In training every
scale's logits are supervised as well ("extra supervision", Sec. 3.4): aux keys
"scale_1", "scale_0.5", ..., weight 1 each.

The base model must provide `features_and_logits(x) -> (features, logits)` and
`feature_channels`, which
`deeplab_v1` and `deeplab_v2` do. The first scale sets the output resolution.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

from atrous.models.base import SegmentationModel
from atrous.models.multiscale import run_at_scales, scale_key
from atrous.models.registry import create_model, register_model


class ScaleAttention(nn.Sequential):
    """(N, S * C, h, w) features -> (N, S, h, w) attention scores (before the softmax)."""

    def __init__(self, in_channels: int, num_scales: int, hidden: int = 512, dropout: float = 0.5) -> None:
        super().__init__(
            nn.Conv2d(in_channels, hidden, 3, padding=1),
            nn.ReLU(inplace=True),
            nn.Dropout(dropout),
            nn.Conv2d(hidden, num_scales, 1),
        )


@register_model("attention_to_scale", "Attention to Scale (Chen et al. CVPR 2016): shared-weight multi-scale + per-pixel scale attention")
class AttentionToScale(SegmentationModel):
    """Attention to scale (Chen et al., CVPR 2016): a shared-weight base model at every scale,
    its per-scale logits summed with per-pixel softmax weights over scales (Eq. 2).

    Args:
        backbone (str | None, default None): passed to the base model (None: its default,
            VGG16 for deeplab_v1 as in the paper).
        output_stride (int | None, default None): passed to the base model (None: its
            default, 8 for deeplab_v1 and deeplab_v2).
        base (str, default "deeplab_v1"): the registered base model, which must provide
            `features_and_logits`; DeepLab-LargeFOV is the paper's, "deeplab_v2"
            (ResNet-101) atrous' option.
        scales (Sequence[float], default (1.0, 0.5)): the input scales; the paper reports
            {1, 0.5}, {1, 0.75} and {1, 0.75, 0.5} (Sec. 4.1); the first sets the output
            size, and each scale's logits are supervised too in training (Sec. 3.4).
        base_options (Mapping[str, Any] | None, default None): the base model's options
            (e.g. {"rates": (2, 4, 8, 12)} for deeplab_v2); atrous' option, not in the paper.
        attention_channels (int, default 512): width of the attention model's 3x3 conv, the
            paper's 512 (Sec. 4).
    """

    def __init__(
        self,
        num_classes: int,
        *,
        in_channels: int = 3,
        backbone: str | None = None,
        output_stride: int | None = None,
        pretrained_backbone: str | None = None,
        base: str = "deeplab_v1",
        scales: Sequence[float] = (1.0, 0.5),
        base_options: Mapping[str, Any] | None = None,
        attention_channels: int = 512,
    ) -> None:
        super().__init__(num_classes, in_channels)
        self.base = create_model(
            base,
            num_classes,
            in_channels=in_channels,
            backbone=backbone,
            output_stride=output_stride,
            pretrained_backbone=pretrained_backbone,
            **dict(base_options or {}),
        )
        if not hasattr(self.base, "features_and_logits"):
            raise ValueError(f"attention_to_scale needs a base model with features_and_logits; '{base}' has none")
        self.scales = tuple(scales)
        self.divisor = self.base.divisor * max(1, round(1 / min(self.scales)))
        channels = self.base.feature_channels * len(self.scales)
        self.attention = ScaleAttention(channels, len(self.scales), attention_channels)
        self.aux_weights = {scale_key(s): 1.0 for s in self.scales}

    def segment(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        per_scale = run_at_scales(self.base.features_and_logits, x, self.scales, self.base.divisor)
        features = torch.cat([f for f, _ in per_scale], dim=1)  # (N, S * C, h, w)
        logits = torch.stack([lg for _, lg in per_scale], dim=1)  # (N, S, K, h, w)
        weights = self.attention(features).softmax(dim=1)  # (N, S, h, w)
        outputs = {"out": (weights.unsqueeze(2) * logits).sum(dim=1)}
        if self.training:
            outputs.update({scale_key(s): logits[:, i] for i, s in enumerate(self.scales)})
        return outputs
