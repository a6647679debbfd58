"""VGG16 (Simonyan & Zisserman, 2015) as a dilatable backbone.

The layer indices of `features` match torchvision's `vgg16` / `vgg16_bn`, so their state
dicts load as they are (classifier tensors are the head's business: FCN and DeepLab v1
turn fc6/fc7 into convolutions). Output stride 16 sets pool5 to stride 1; output stride 8
also sets pool4 to stride 1 and dilates conv5 by 2, as in DeepLab v1 (Chen et al., ICLR
2015, Sec. 3.1). Pools at stride 1 are 3x3 with padding 1 so sizes are kept.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from atrous.backbones.base import Backbone, adapt_first_conv, load_weights_file
from atrous.layers import keep_init

VGG16_STAGES: tuple[tuple[int, int], ...] = ((64, 2), (128, 2), (256, 3), (512, 3), (512, 3))


class VGG16(Backbone):
    """Features after each of the five pools (strides 2, 4, 8, 16, 32 at output stride 32).

    `pool_kernel=3` uses DeepLab v1's 3x3 / stride 2 / padding 1 pools everywhere.
    """

    def __init__(
        self,
        *,
        batch_norm: bool = False,
        in_channels: int = 3,
        output_stride: int = 32,
        out_indices: Sequence[int] | None = None,
        pool_kernel: int = 2,
        pretrained: str | None = None,
    ) -> None:
        super().__init__()
        if output_stride not in (8, 16, 32):
            raise ValueError(f"output_stride must be 8, 16 or 32, got {output_stride}")
        layers: list[nn.Module] = []
        self._pool_positions: list[int] = []
        channels, stride = in_channels, 1
        for stage, (width, depth) in enumerate(VGG16_STAGES):
            dilation = 2 if (output_stride == 8 and stage == 4) else 1
            for _ in range(depth):
                layers.append(nn.Conv2d(channels, width, 3, padding=dilation, dilation=dilation))
                if batch_norm:
                    layers.append(nn.BatchNorm2d(width))
                layers.append(nn.ReLU(inplace=True))
                channels = width
            if stride * 2 <= output_stride:
                stride *= 2
                pool = (
                    nn.MaxPool2d(2, stride=2)
                    if pool_kernel == 2
                    else nn.MaxPool2d(3, stride=2, padding=1)
                )
            else:
                pool = nn.MaxPool2d(3, stride=1, padding=1)
            self._pool_positions.append(len(layers))
            layers.append(pool)
        self.features = nn.Sequential(*layers)
        self.out_indices = tuple(out_indices) if out_indices is not None else (0, 1, 2, 3, 4)
        all_reductions = [min(2 ** (i + 1), output_stride) for i in range(5)]
        self.channels = [VGG16_STAGES[i][0] for i in self.out_indices]
        self.reductions = [all_reductions[i] for i in self.out_indices]
        self.batch_norm = batch_norm
        if pretrained is not None:
            if pretrained in ("imagenet", "torchvision"):
                self._load_torchvision_weights()
            else:
                load_weights_file(self, pretrained)
            keep_init(self)  # loaded weights: create_model's initialisation leaves them alone

    def _load_torchvision_weights(self) -> None:
        """Fetch torchvision's ImageNet weights (network access needed) into `features`."""
        from torchvision.models import VGG16_BN_Weights, VGG16_Weights

        weights = VGG16_BN_Weights.IMAGENET1K_V1 if self.batch_norm else VGG16_Weights.IMAGENET1K_V1
        state = weights.get_state_dict(progress=True)
        usable = {k: v for k, v in state.items() if k.startswith("features.")}
        adapt_first_conv(usable, self.state_dict())  # RGB weights for a model of other bands
        self.load_state_dict(usable)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        outputs: list[torch.Tensor] = []
        start = 0
        for stage, end in enumerate(self._pool_positions):
            for layer in self.features[start : end + 1]:
                x = layer(x)
            start = end + 1
            if stage in self.out_indices:
                outputs.append(x)
        return outputs
