"""The factory that picks a backbone by name: ours (VGG16) or any of timm's."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from atrous.backbones.base import Backbone
from atrous.backbones.timm_backbone import TimmBackbone
from atrous.backbones.vgg import VGG16


def create_backbone(
    name: str,
    *,
    in_channels: int = 3,
    output_stride: int = 32,
    out_indices: Sequence[int] | None = None,
    multi_grid: Sequence[int] | None = None,
    pretrained: str | None = None,
    **timm_options: Any,
) -> Backbone:
    """`vgg16` / `vgg16_bn` are atrous' own (torchvision weight names); any other name is a
    timm model used with `features_only=True` (`timm_options`: TimmBackbone's other options)."""
    if name in ("vgg16", "vgg16_bn"):
        if timm_options:
            raise ValueError(f"backbone options {sorted(timm_options)} apply to timm backbones, not VGG16")
        if multi_grid is not None:
            raise ValueError("multi_grid applies to ResNet-style backbones, not VGG16")
        return VGG16(
            batch_norm=name == "vgg16_bn",
            in_channels=in_channels,
            output_stride=output_stride,
            out_indices=out_indices,
            pretrained=pretrained,
        )
    return TimmBackbone(
        name,
        in_channels=in_channels,
        output_stride=output_stride,
        out_indices=out_indices,
        multi_grid=multi_grid,
        pretrained=pretrained,
        **timm_options,
    )

