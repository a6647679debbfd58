"""SegNet and SegNet-Basic.

Badrinarayanan, Kendall, Cipolla, "SegNet: A Deep Convolutional Encoder-Decoder
Architecture for Image Segmentation", TPAMI 2017.

- `segnet` (Sec. 3, Fig. 2): the 13 convolutions of VGG16-BN as encoder, 2x2 max pooling
  whose argmax indices are kept; a mirrored decoder in which each stage max-unpools with
  its encoder stage's indices (sparse maps, values at the argmax positions) and densifies
  with 3x3 conv-BN-ReLU. The decoder is the reference model's (SegNet-Tutorial's
  `segnet_train.prototxt`): 13 convolutions, `conv5_3_D` ... `conv1_2_D` with batch norm and
  ReLU, then `conv1_1_D`, a 3x3 convolution to the classes. 29.44M parameters at 11 classes
  (docs/models.md; the paper's figure is 29.4M). The encoder's tensor names are torchvision's
  `vgg16_bn.features`, so its state dict loads (`pretrained_backbone`).
- `segnet_basic` (Sec. 4.1): 4 encoder stages of 7x7 conv (64) - BN - ReLU - 2x2 max pool,
  4 decoder stages of unpooling - 7x7 conv (64) - BN, with "no biases after convolutions
  and no ReLU non-linearity in the decoder", and a 1x1 classifier.

Deviations: the input is zero-padded to a multiple of 32 (16 for SegNet-Basic) so that every
pooling sees an even size (the reference crops instead). `extra_decoder_conv=True` gives the
decoder atrous built before it matched the reference: one more 64 -> 64 conv-BN-ReLU in the last
stage (checkpoints saved with it are recognised by their weights and load as they were).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from atrous.backbones import VGG16
from atrous.backbones.vgg import VGG16_STAGES
from atrous.models.base import SegmentationModel
from atrous.models.registry import register_model

Pooled = tuple[torch.Tensor, torch.Size]  # (argmax indices, size before pooling)


def pool_with_indices(x: torch.Tensor) -> tuple[torch.Tensor, Pooled]:
    """2x2 / stride 2 max pooling that remembers where each maximum came from."""
    pooled, indices = F.max_pool2d(x, 2, stride=2, return_indices=True)
    return pooled, (indices, x.shape)


def unpool(x: torch.Tensor, memory: Pooled) -> torch.Tensor:
    """Max-unpooling (Sec. 3): each value goes back to its argmax position, zeros elsewhere.

    F.max_unpool2d written as a scatter into each (n, c) plane, the same values and gradient,
    because max_unpool2d neither traces at free sizes nor exports to ONNX (ScatterElements
    does); the 2x2 windows do not overlap, so no two values share an index."""
    indices, size = memory  # indices (N, C, h, w) into each plane of `size` (N, C, H, W)
    planes = x.new_zeros(size[0], size[1], size[2] * size[3])
    return planes.scatter_(2, indices.flatten(2), x.flatten(2)).reshape(size)  # in place: as fast


def conv_bn(in_channels: int, out_channels: int, kernel_size: int, *, relu: bool, bias: bool) -> list[nn.Module]:
    layers: list[nn.Module] = [
        nn.Conv2d(in_channels, out_channels, kernel_size, padding=kernel_size // 2, bias=bias),
        nn.BatchNorm2d(out_channels),
    ]
    if relu:
        layers.append(nn.ReLU(inplace=True))
    return layers


def segnet_decoder_stage(in_channels: int, out_channels: int, depth: int) -> nn.Sequential:
    """Mirror of an encoder stage: `depth` 3x3 conv-BN-ReLU, the last one narrowing (the
    first decoder stage passes depth - 1: its last convolution is the classifier)."""
    layers: list[nn.Module] = []
    for i in range(depth):
        layers += conv_bn(in_channels, out_channels if i == depth - 1 else in_channels, 3, relu=True, bias=True)
    return nn.Sequential(*layers)


@register_model("segnet", "SegNet (Badrinarayanan et al. TPAMI 2017): VGG16-BN encoder, max-unpooling decoder")
class SegNet(SegmentationModel):
    """SegNet (TPAMI 2017, Sec. 3, Fig. 2). Encoder: VGG16-BN's `features` (torchvision
    layout); decoder: five mirrored stages, 13 convolutions with the classifier, as the
    reference prototxt.

    Args:
        backbone (str, default "vgg16_bn"): the encoder, the 13 convolutions of VGG16 with
            batch norm as in the paper (Sec. 3); "vgg16" (no batch norm) is atrous' option.
        output_stride (int, default 32): fixed: five 2x2 poolings, undone by unpooling; any
            other value is refused.
        pretrained_backbone (str | None, default None): weights for the encoder, in
            torchvision's `vgg16_bn.features` names.
        extra_decoder_conv (bool, default False): one more 64 -> 64 conv-BN-ReLU before the
            classifier (atrous' decoder before it matched the reference prototxt); not in
            the paper.
    """

    # the extra convolution's tensors: a checkpoint that has them was saved with it
    EXTRA_CONV_KEY = "decoder.4.3.weight"

    def __init__(
        self,
        num_classes: int,
        *,
        in_channels: int = 3,
        backbone: str | None = None,
        output_stride: int | None = None,
        pretrained_backbone: str | None = None,
        extra_decoder_conv: bool = False,
    ) -> None:
        super().__init__(num_classes, in_channels)
        if backbone not in (None, "vgg16_bn", "vgg16"):
            raise ValueError(f"segnet's encoder is vgg16_bn (or vgg16), not '{backbone}'")
        if output_stride not in (None, 32):
            raise ValueError("segnet pools five times (output stride 32); leave output_stride unset")
        self.divisor = 32
        self.encoder = VGG16(
            batch_norm=backbone != "vgg16", in_channels=in_channels, pretrained=pretrained_backbone
        )
        # (64, 2), (128, 2), (256, 3), (512, 3), (512, 3) mirrored: stage 5 first
        widths = [w for w, _ in VGG16_STAGES]
        stages = []
        for stage in range(4, -1, -1):
            width, depth = VGG16_STAGES[stage]
            narrower = widths[stage - 1] if stage > 0 else width
            if stage == 0 and not extra_decoder_conv:
                depth -= 1  # conv1_2_D; conv1_1_D is the classifier
            stages.append(segnet_decoder_stage(width, narrower, depth))
        self.decoder = nn.ModuleList(stages)
        self.classifier = nn.Conv2d(widths[0], num_classes, 3, padding=1)

    @classmethod
    def options_for_weights(cls, options: dict, keys: set[str]) -> dict:
        """The options that fit a checkpoint's tensors: one saved before the decoder matched
        the reference has the extra convolution's weights and no option naming it."""
        if "extra_decoder_conv" not in options and cls.EXTRA_CONV_KEY in keys:
            return {**options, "extra_decoder_conv": True}
        return options

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, list[Pooled]]:
        """Runs VGG16-BN's features, pooling with indices; returns pool5 and the memories."""
        memories: list[Pooled] = []
        for layer in self.encoder.features:
            if isinstance(layer, nn.MaxPool2d):
                x, memory = pool_with_indices(x)
                memories.append(memory)
            else:
                x = layer(x)
        return x, memories  # (N, 512, H/32, W/32)

    def segment(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        x, memories = self.encode(x)
        for stage, memory in zip(self.decoder, reversed(memories), strict=True):
            x = stage(unpool(x, memory))
        return {"out": self.classifier(x)}  # (N, K, H, W)


@register_model("segnet_basic", "SegNet-Basic (Badrinarayanan et al. TPAMI 2017): 4 stages, 64 ch, 7x7")
class SegNetBasic(SegmentationModel):
    """SegNet-Basic (TPAMI 2017, Sec. 4.1): a small encoder-decoder of its own, no backbone
    (`backbone` and `pretrained_backbone` must stay unset).

    Args:
        output_stride (int, default 2**depth = 16): fixed by `depth`; any other value is
            refused.
        channels (int, default 64): width of every encoder and decoder convolution, the
            paper's 64 (Sec. 4.1).
        kernel_size (int, default 7): size of those convolutions, the paper's 7x7 (Sec. 4.1).
        depth (int, default 4): number of encoder stages (and of mirrored decoder stages),
            the paper's 4 (Sec. 4.1).
    """

    def __init__(
        self,
        num_classes: int,
        *,
        in_channels: int = 3,
        backbone: str | None = None,
        output_stride: int | None = None,
        pretrained_backbone: str | None = None,
        channels: int = 64,
        kernel_size: int = 7,
        depth: int = 4,
    ) -> None:
        super().__init__(num_classes, in_channels)
        if backbone is not None or pretrained_backbone is not None:
            raise ValueError("segnet_basic has its own small encoder; leave backbone unset")
        if output_stride not in (None, 2**depth):
            raise ValueError(f"segnet_basic's output stride is 2**depth = {2**depth}")
        self.divisor = 2**depth
        self.encoder = nn.ModuleList(
            nn.Sequential(*conv_bn(in_channels if i == 0 else channels, channels, kernel_size, relu=True, bias=False))
            for i in range(depth)
        )
        self.decoder = nn.ModuleList(
            nn.Sequential(*conv_bn(channels, channels, kernel_size, relu=False, bias=False))
            for _ in range(depth)
        )
        self.classifier = nn.Conv2d(channels, num_classes, 1)

    def segment(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        memories: list[Pooled] = []
        for stage in self.encoder:
            x, memory = pool_with_indices(stage(x))
            memories.append(memory)
        for stage, memory in zip(self.decoder, reversed(memories), strict=True):
            x = stage(unpool(x, memory))
        return {"out": self.classifier(x)}  # (N, K, H, W)
