"""Any timm encoder as a backbone, via `features_only=True`, with output stride and
DeepLab v3's multi-grid (Chen et al., 2017, Sec. 3.2); optionally features taken after any
named block, and torchvision's MobileNetV3 rule for dilated stages."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

from atrous.backbones.base import Backbone, load_weights_file

NAMED_SOURCES = ("imagenet", "timm")


def _is_named_source(pretrained: str) -> bool:
    return pretrained in NAMED_SOURCES or pretrained.startswith("timm:")


class TimmBackbone(Backbone):
    """Wraps `timm.create_model(name, features_only=True, output_stride=...)`.

    `pretrained` is None, a local weights file (timm names), or a named source:
    "imagenet"/"timm" (timm's default pretrained tag) or "timm:<tag>", fetched by timm
    only when asked for. `multi_grid` multiplies the dilation of the 3x3 convolutions of
    the last stage's blocks, block by block (e.g. (1, 2, 4); a two-block stage uses (1, 2)).

    `feature_modules` names the modules of the timm model whose outputs are the features, in
    order (e.g. ("blocks.2.0", "blocks.6"): after the first block of MobileNetV3's stride-8
    stage, and the last block), instead of the end of every stage. `dilate_stage_entry`:
    where output stride turns a stage's stride into dilation, timm (like DeepLab's reference
    code) keeps the previous rate in the stage's first block; True gives that block the
    stage's rate too, as torchvision's MobileNetV3 does. `timm_kwargs` go to
    `timm.create_model` (e.g. {"bn_eps": 0.001}, torchvision's MobileNetV3 batch norm).
    """

    def __init__(
        self,
        name: str,
        *,
        in_channels: int = 3,
        output_stride: int = 32,
        out_indices: Sequence[int] | None = None,
        multi_grid: Sequence[int] | None = None,
        pretrained: str | None = None,
        feature_modules: Sequence[str] | None = None,
        dilate_stage_entry: bool = False,
        timm_kwargs: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__()
        import timm

        if output_stride not in (8, 16, 32):
            raise ValueError(f"output_stride must be 8, 16 or 32, got {output_stride}")
        if not timm.is_model(name):
            raise ValueError(f"unknown backbone '{name}' (not a timm model nor vgg16/vgg16_bn)")
        model_name = name
        fetch = pretrained is not None and _is_named_source(pretrained)
        if fetch and pretrained.startswith("timm:"):
            model_name = f"{name}.{pretrained.split(':', 1)[1]}"
        if pretrained is not None and not fetch and not os.path.isfile(pretrained):
            raise FileNotFoundError(
                f"pretrained_backbone '{pretrained}' is neither a file nor one of {NAMED_SOURCES}"
            )
        kwargs = {**dict(timm_kwargs or {}), "features_only": True, "in_chans": in_channels, "pretrained": fetch}
        if out_indices is not None:
            kwargs["out_indices"] = tuple(out_indices)
        if output_stride != 32:
            kwargs["output_stride"] = output_stride
        try:
            self.body = timm.create_model(model_name, **kwargs)
        except (TypeError, RuntimeError, ValueError) as err:
            raise ValueError(f"backbone '{name}' cannot be built with output_stride={output_stride}: {err}") from err
        if pretrained is not None and not fetch:
            load_weights_file(self.body, pretrained)
        self.name = name
        self.channels = list(self.body.feature_info.channels())
        self.reductions = [min(r, output_stride) for r in self.body.feature_info.reduction()]
        if multi_grid is not None:
            self._apply_multi_grid(tuple(multi_grid), stage_dilation=32 // output_stride)
        if dilate_stage_entry:
            self._dilate_stage_entries()
        self.feature_modules = tuple(feature_modules or ())
        if self.feature_modules:
            self._measure_taps(in_channels)

    def last_stage(self) -> nn.Module:
        """The module of the deepest stage (a ResNet's layer4)."""
        module_name = self.body.feature_info.module_name()[-1]
        stage: nn.Module = self.body
        for part in module_name.split("."):
            stage = getattr(stage, part)
        return stage

    def _apply_multi_grid(self, grid: tuple[int, ...], stage_dilation: int) -> None:
        """Multi-grid: block i's 3x3 convs get rate `stage_dilation * grid[i]`
        (e.g. (2, 4, 8) for grid (1, 2, 4) at output stride 16)."""
        stage = self.last_stage()
        blocks = list(stage.children()) if isinstance(stage, nn.Sequential) else []
        if not blocks or len(blocks) > len(grid):
            raise ValueError(
                f"multi_grid {grid} needs a last stage of at most {len(grid)} blocks; "
                f"backbone '{self.name}' has {len(blocks) or 'no'} blocks there"
            )
        # a shorter stage (ResNet-18's two blocks) takes the first unit rates of the grid
        for block, unit_rate in zip(blocks, grid[: len(blocks)], strict=True):
            convs = [m for m in block.modules() if isinstance(m, nn.Conv2d) and m.kernel_size[0] > 1]
            rate = stage_dilation * unit_rate
            for conv in convs:
                conv.dilation = (rate, rate)
                conv.padding = (rate * (conv.kernel_size[0] - 1) // 2,) * 2

    def _stages(self) -> list[nn.Sequential]:
        """The stages: the sequential siblings of the deepest feature module."""
        parent_name = self.body.feature_info.module_name()[-1].rpartition(".")[0]
        parent = self.body.get_submodule(parent_name) if parent_name else self.body
        return [stage for stage in parent.children() if isinstance(stage, nn.Sequential)]

    def _dilate_stage_entries(self) -> None:
        for stage in self._stages():
            blocks = list(stage.children())
            later = [m for b in blocks[1:] for m in b.modules() if isinstance(m, nn.Conv2d) and m.kernel_size[0] > 1]
            rates = {conv.dilation for conv in later}
            if len(rates) != 1 or max(rates.pop()) == 1:
                continue
            rate = later[0].dilation
            for conv in (m for m in blocks[0].modules() if isinstance(m, nn.Conv2d) and m.kernel_size[0] > 1):
                if conv.stride == (1, 1):
                    conv.dilation = rate
                    conv.padding = tuple(r * (k - 1) // 2 for r, k in zip(rate, conv.kernel_size, strict=True))

    def _measure_taps(self, in_channels: int) -> None:
        """Channels and strides of the `feature_modules` outputs, from a pass on a 64x64 input
        (on the meta device when the model is built there)."""
        size = 64
        with torch.no_grad():
            features = self._tapped(torch.zeros(1, in_channels, size, size, device=_device_of(self.body)))
        self.channels = [f.shape[1] for f in features]
        self.reductions = [size // f.shape[-1] for f in features]

    def _tapped(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The outputs of `feature_modules`, caught by forward hooks during one pass."""
        caught: dict[int, torch.Tensor] = {}
        handles = [
            self.body.get_submodule(name).register_forward_hook(
                lambda _module, _input, output, index=index: caught.__setitem__(index, output)
            )
            for index, name in enumerate(self.feature_modules)
        ]
        try:
            self.body(x)
        finally:
            for handle in handles:
                handle.remove()
        return [caught[index] for index in range(len(self.feature_modules))]

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        if self.feature_modules:
            return self._tapped(x)
        return list(self.body(x))


def _device_of(module: nn.Module) -> torch.device:
    parameter = next(module.parameters(), None)
    return parameter.device if parameter is not None else torch.device("cpu")


def cascaded_blocks(backbone: TimmBackbone, count: int, first_rate: int,
                    multi_grid: Sequence[int] | None) -> nn.Sequential:
    """`count` copies of a ResNet's last stage placed after it (DeepLab v3's block5, block6,
    ...; Chen et al. 2017, Sec. 3.2): each copy's units take and give the last stage's
    channels; copy b (1, 2, ...) runs at rate first_rate * 2**b, each unit at that rate times
    its multi-grid unit rate. New weights, initialised as the block's constructor does."""
    units = list(backbone.last_stage().children())
    block = type(units[0])
    if not hasattr(block, "expansion") or not hasattr(units[-1], "conv1"):
        raise ValueError(f"cascaded blocks need a ResNet-style backbone; '{backbone.name}' is not one")
    channels = backbone.channels[-1]
    planes = channels // block.expansion
    width, groups = units[-1].conv1.out_channels, units[-1].conv2.groups
    base_width = 64 * width // (planes * groups)
    grid = tuple(multi_grid) if multi_grid else (1,) * len(units)
    copies = []
    for b in range(1, count + 1):
        rates = [first_rate * 2**b * unit for unit in grid[: len(units)]]
        copies.append(nn.Sequential(*(
            block(channels, planes, cardinality=groups, base_width=base_width, dilation=rate, first_dilation=rate)
            for rate in rates
        )))
    return nn.Sequential(*copies)
