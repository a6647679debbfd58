"""segmentation_models_pytorch's Unet and DeepLabV3Plus as atrous models, for the CamVid
benchmark's peer rows: the same Trainer, loss, optimiser, data pipeline and evaluation run
them as they run atrous' own models.

Importing this module registers two models with `atrous.models.register_model`:

- `smp_unet`: `smp.Unet(encoder_name=backbone, encoder_weights=None)`, divisor 32
- `smp_deeplabv3plus`: `smp.DeepLabV3Plus(encoder_name=backbone, encoder_weights=None,
  encoder_output_stride=output_stride or 16)`, divisor 16 (8 at output stride 8)

smp stays out of atrous' runtime: it is the `bench` extra. A checkpoint of these models
loads only where this module has been imported first. This file is also the atrous
command line with the two models registered:

    .venv/bin/python benchmarks/smp_models.py train --config configs/camvid/smp_unet_resnet18.yaml
    .venv/bin/python benchmarks/smp_models.py eval --checkpoint runs/camvid/smp_unet_resnet18/model.safetensors \
        --dataset camvid --split val
"""

from __future__ import annotations

import sys

import torch

from atrous.layers import keep_init
from atrous.models import SegmentationModel, list_models, register_model

SMP_DEFAULT_ENCODER = "resnet18"


class SmpAdapter(SegmentationModel):
    """An smp model behind atrous' contract: any input size (padding to `divisor` by the
    base class), `segment(x) -> {"out": logits}` at full resolution."""

    architecture = ""  # the smp class name

    def __init__(
        self,
        num_classes: int,
        *,
        in_channels: int = 3,
        backbone: str | None = None,
        output_stride: int | None = None,
        pretrained_backbone: str | None = None,
    ) -> None:
        import segmentation_models_pytorch as smp

        super().__init__(num_classes, in_channels)
        if pretrained_backbone not in (None, "imagenet"):
            raise ValueError(f"{type(self).__name__} takes pretrained_backbone None or 'imagenet' (smp's own)")
        self.encoder_name = backbone or SMP_DEFAULT_ENCODER
        self.net = getattr(smp, self.architecture)(
            encoder_name=self.encoder_name,
            encoder_weights=pretrained_backbone,
            in_channels=in_channels,
            classes=num_classes,
            **self._smp_options(output_stride),
        )
        keep_init(self.net)  # smp's own initialisation, not atrous'

    def _smp_options(self, output_stride: int | None) -> dict[str, int]:
        if output_stride not in (None, 32):
            raise ValueError(f"{self.architecture} runs its encoder at stride 32; leave output_stride unset")
        return {}

    def segment(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"out": self.net(x)}  # (N, K, H, W)


class SmpUnet(SmpAdapter):
    architecture = "Unet"
    divisor = 32


class SmpDeepLabV3Plus(SmpAdapter):
    architecture = "DeepLabV3Plus"
    divisor = 16

    def _smp_options(self, output_stride: int | None) -> dict[str, int]:
        stride = output_stride or 16
        if stride not in (8, 16):
            raise ValueError(f"DeepLabV3Plus takes output_stride 8 or 16, got {stride}")
        self.divisor = stride
        return {"encoder_output_stride": stride}


SMP_MODELS = {
    "smp_unet": (SmpUnet, "smp.Unet (segmentation_models_pytorch), for benchmarks; any smp encoder"),
    "smp_deeplabv3plus": (SmpDeepLabV3Plus, "smp.DeepLabV3Plus (segmentation_models_pytorch), for benchmarks"),
}


def register() -> None:
    """Register the smp models (once: importing this file under two names is harmless)."""
    known = set(list_models())
    for name, (cls, summary) in SMP_MODELS.items():
        if name not in known:
            register_model(name, summary)(cls)


register()

if __name__ == "__main__":
    from atrous.cli import main

    sys.exit(main())
