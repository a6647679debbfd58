"""U-Net (Ronneberger, Fischer, Brox, "U-Net: Convolutional Networks for Biomedical Image
Segmentation", MICCAI 2015, Sec. 2 and Fig. 1).

Default (`backbone=None`): the original network - four down steps of two 3x3 conv + ReLU
and 2x2 max pooling (64 -> 1024 channels), four up steps of a 2x2 up-convolution halving
the channels, concatenation with the skip, two 3x3 conv + ReLU, and a 1x1 classifier.
`padding="valid"` is the network as published: unpadded 3x3 convolutions, the skip features
cropped to the up-sampled map (a 572x572 tile gives 388x388 scores, `valid_scores`), and the
overlap-tile strategy (Fig. 2) inside `model(x)`: the image is mirrored at its borders by the
92-pixel margin the valid network consumes, cut into output tiles of at most `tile` (388)
pixels, each run with its context, so that `model(x)` returns logits of the input's size as
every atrous model does. `padding="same"` (the default) pads the convolutions instead, a
deviation that needs no tiling; `batch_norm` (off by default, as in the paper) adds BN after
every convolution; `dropout` (0.5) is the drop-out "at the end of the contracting path"
(Sec. 3).

With `backbone=<timm name>`: the encoder variant, smp-style - the backbone's features at
strides 2..32 as skips, decoder blocks of x2 nearest upsampling, concatenation and two
3x3 conv-BN-ReLU, with `decoder_channels` per block.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from atrous.backbones import create_backbone
from atrous.models.base import SegmentationModel
from atrous.models.registry import register_model

PADDINGS = ("same", "valid")
VALID_SHRINK = 184  # the paper's network: a 572x572 tile gives 388x388 scores
PAPER_TILE = 388


def double_conv(in_channels: int, out_channels: int, batch_norm: bool, padding: int = 1) -> nn.Sequential:
    """Two 3x3 convolutions (padded by `padding`), each followed by (BN and) ReLU."""
    layers: list[nn.Module] = []
    for channels in (in_channels, out_channels):
        layers.append(nn.Conv2d(channels, out_channels, 3, padding=padding, bias=not batch_norm))
        if batch_norm:
            layers.append(nn.BatchNorm2d(out_channels))
        layers.append(nn.ReLU(inplace=True))
    return nn.Sequential(*layers)


class UpStep(nn.Module):
    """2x2 up-convolution halving the channels, concatenation with the skip (its centre
    cropped to the up-sampled size: "the cropping is necessary due to the loss of border
    pixels in every convolution", Sec. 2), double conv."""

    def __init__(self, in_channels: int, out_channels: int, batch_norm: bool, padding: int = 1) -> None:
        super().__init__()
        self.up = nn.ConvTranspose2d(in_channels, out_channels, 2, stride=2)
        self.conv = double_conv(2 * out_channels, out_channels, batch_norm, padding)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        x = self.up(x)
        top, left = (skip.shape[-2] - x.shape[-2]) // 2, (skip.shape[-1] - x.shape[-1]) // 2
        skip = skip[..., top : top + x.shape[-2], left : left + x.shape[-1]]
        return self.conv(torch.cat([skip, x], dim=1))


def valid_output_size(size: int) -> int | None:
    """The side of the valid network's scores for an input side, None if some pooling would
    see an odd size or a map would vanish (valid sides are 16k + 12: 572 -> 388)."""
    for _ in range(4):  # down: two convolutions (-4), then a 2x2 pooling
        size -= 4
        if size < 2 or size % 2:
            return None
        size //= 2
    size -= 4  # the bottom's two convolutions
    for _ in range(4):  # up: x2, then two convolutions
        size = size * 2 - 4
    return size if size > 0 else None


def smallest_valid_tile(side: int) -> int:
    """The smallest output side of the valid network that covers `side` pixels."""
    out = max(side, 4)
    while valid_output_size(out + VALID_SHRINK) != out:
        out += 1
    return out


def mirror_pad(x: torch.Tensor, top: int, bottom: int, left: int, right: int) -> torch.Tensor:
    """Reflect padding of any width: mirrored again where the pad exceeds the image."""
    while top or bottom or left or right:
        height, width = x.shape[-2:]
        step = [min(left, width - 1), min(right, width - 1), min(top, height - 1), min(bottom, height - 1)]
        if not any(step):  # a 1-pixel side cannot be reflected: repeat it
            return F.pad(x, (left, right, top, bottom), mode="replicate")
        x = F.pad(x, tuple(step), mode="reflect")
        left, right, top, bottom = left - step[0], right - step[1], top - step[2], bottom - step[3]
    return x


class EncoderDecoderBlock(nn.Module):
    """x2 nearest upsampling, concatenation with the skip (if any), two conv-BN-ReLU."""

    def __init__(self, in_channels: int, skip_channels: int, out_channels: int) -> None:
        super().__init__()
        self.conv = double_conv(in_channels + skip_channels, out_channels, batch_norm=True)

    def forward(self, x: torch.Tensor, skip: torch.Tensor | None) -> torch.Tensor:
        x = F.interpolate(x, scale_factor=2, mode="nearest")
        if skip is not None:
            x = torch.cat([x, skip], dim=1)
        return self.conv(x)


@register_model("unet", "U-Net (Ronneberger et al. MICCAI 2015): original 64-1024 net, or any timm encoder")
class UNet(SegmentationModel):
    """U-Net (Ronneberger et al., MICCAI 2015): the original network (`backbone=None`) or the
    smp-style encoder variant on a timm backbone (see the module docstring).

    Args:
        backbone (str | None, default None): None builds the paper's network (Sec. 2, Fig. 1);
            a timm name with features at strides 2 to 32 builds the encoder variant, atrous'
            option, not in the paper.
        output_stride (int, default 16, or 32 with a backbone): fixed: four 2x2 poolings in
            the original (five strides in the encoder variant); any other value is refused.
        base_channels (int, default 64): width of the first level, doubled at each of the four
            down steps (64 -> 1024, Fig. 1). Original network only.
        batch_norm (bool, default False): batch norm after every convolution of the original
            network; off as in the paper (a deviation when on).
        dropout (float, default 0.5): channel-wise dropout at the end of the contracting path
            (Sec. 3); 0 removes it. Original network only.
        decoder_channels (Sequence[int], default (256, 128, 64, 32, 16)): widths of the five
            decoder blocks of the encoder variant (smp's); atrous' option, not in the paper.
        padding (str, default "same"): "valid" is the paper's network (unpadded convolutions,
            cropped skips, overlap-tiling with mirrored borders, Sec. 2 and Fig. 2); "same"
            pads the convolutions (a deviation: no tiling, output size = input size).
            Original network only.
        tile (int, default 388): the largest output tile of the valid network's
            overlap-tiling, the paper's 388 (a 572-pixel input tile); smaller images use
            the smallest tile that covers them.
    """

    def __init__(
        self,
        num_classes: int,
        *,
        in_channels: int = 3,
        backbone: str | None = None,
        output_stride: int | None = None,
        pretrained_backbone: str | None = None,
        base_channels: int = 64,
        batch_norm: bool = False,
        dropout: float = 0.5,
        decoder_channels: Sequence[int] = (256, 128, 64, 32, 16),
        padding: str = "same",
        tile: int = PAPER_TILE,
    ) -> None:
        super().__init__(num_classes, in_channels)
        if output_stride not in (None, 32 if backbone else 16):
            raise ValueError("unet keeps its encoder's full stride; leave output_stride unset")
        if padding not in PADDINGS:
            raise ValueError(f"unet padding must be one of {', '.join(PADDINGS)}, got '{padding}'")
        if padding == "valid" and backbone is not None:
            raise ValueError("padding='valid' is the paper's network; the encoder variant pads")
        if valid_output_size(tile + VALID_SHRINK) != tile:
            raise ValueError(f"tile {tile} is not an output size of the valid network (16k + 4: 388, 372, ...)")
        self.encoder_variant = backbone is not None
        self.valid = padding == "valid"
        self.tile = tile
        if self.encoder_variant:
            self._build_encoder_variant(backbone, pretrained_backbone, decoder_channels)
        else:
            if pretrained_backbone is not None:
                raise ValueError("pretrained_backbone needs backbone=<timm name> for unet")
            self._build_original(base_channels, batch_norm, dropout)

    def _build_original(self, base: int, batch_norm: bool, dropout: float) -> None:
        widths = [base * 2**i for i in range(5)]  # 64, 128, 256, 512, 1024
        pad = 0 if self.valid else 1
        self.encoder_stride = 16  # four 2x2 poolings
        self.divisor = 1 if self.valid else 16  # the valid network tiles the image itself
        self.down = nn.ModuleList(
            [double_conv(self.in_channels, widths[0], batch_norm, pad)]
            + [double_conv(widths[i - 1], widths[i], batch_norm, pad) for i in range(1, 5)]
        )
        self.dropout = nn.Dropout2d(dropout) if dropout > 0 else nn.Identity()
        self.up = nn.ModuleList([UpStep(widths[i], widths[i - 1], batch_norm, pad) for i in range(4, 0, -1)])
        self.classifier = nn.Conv2d(widths[0], self.num_classes, 1)

    def _build_encoder_variant(
        self, backbone: str, pretrained: str | None, decoder_channels: Sequence[int]
    ) -> None:
        self.divisor = 32
        self.encoder = create_backbone(
            backbone, in_channels=self.in_channels, output_stride=32, pretrained=pretrained
        )
        if self.encoder.reductions != [2, 4, 8, 16, 32]:
            raise ValueError(
                f"unet needs a backbone with features at strides 2..32, "
                f"'{backbone}' gives {self.encoder.reductions}"
            )
        if len(decoder_channels) != 5:
            raise ValueError(f"decoder_channels needs 5 values, got {list(decoder_channels)}")
        skips = self.encoder.channels[-2::-1] + [0]  # strides 16, 8, 4, 2, then none
        ins = [self.encoder.channels[-1], *decoder_channels[:-1]]
        self.blocks = nn.ModuleList(
            EncoderDecoderBlock(i, s, o) for i, s, o in zip(ins, skips, decoder_channels, strict=True)
        )
        self.classifier = nn.Conv2d(decoder_channels[-1], self.num_classes, 3, padding=1)

    def segment(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        if self.encoder_variant:
            return {"out": self._segment_encoder_variant(x)}
        if self.valid:
            return {"out": self._overlap_tile(x)}
        return {"out": self._network(x)}

    def valid_scores(self, tile: torch.Tensor) -> torch.Tensor:
        """The paper's valid network on one input tile: (N, C, S, S) -> (N, K, S - 184, S - 184)
        (572 -> 388), for valid sides S = 16k + 12."""
        if not self.valid:
            raise ValueError("valid_scores is the padding='valid' network's")
        for side in tile.shape[-2:]:
            if valid_output_size(side) is None:
                raise ValueError(f"{side} is not an input side of the valid U-Net (16k + 12: 572, 556, ...)")
        return self._network(tile)

    def _overlap_tile(self, x: torch.Tensor) -> torch.Tensor:
        """Fig. 2: mirror the image by the 92-pixel margin, run the valid network on input
        tiles whose output tiles cover it, stitch the scores: (N, C, H, W) -> (N, K, H, W)."""
        height, width = x.shape[-2:]
        tiles = (min(self.tile, smallest_valid_tile(height)), min(self.tile, smallest_valid_tile(width)))
        counts = (-(-height // tiles[0]), -(-width // tiles[1]))
        margin = VALID_SHRINK // 2
        padded = mirror_pad(x, margin, margin + counts[0] * tiles[0] - height,
                            margin, margin + counts[1] * tiles[1] - width)
        rows = []
        for i in range(counts[0]):
            top = i * tiles[0]
            row = [self._network(padded[..., top : top + tiles[0] + VALID_SHRINK, j * tiles[1] : (j + 1) * tiles[1] + VALID_SHRINK])
                   for j in range(counts[1])]
            rows.append(torch.cat(row, dim=-1))
        return torch.cat(rows, dim=-2)[..., :height, :width]

    def _network(self, x: torch.Tensor) -> torch.Tensor:
        skips = []
        for i, step in enumerate(self.down):
            x = step(x if i == 0 else F.max_pool2d(x, 2))
            skips.append(x)
        x = self.dropout(skips.pop())  # (N, 1024, H/16, W/16) padded; smaller when valid
        for up in self.up:
            x = up(x, skips.pop())
        return self.classifier(x)

    def _segment_encoder_variant(self, x: torch.Tensor) -> torch.Tensor:
        features = self.encoder(x)  # strides 2, 4, 8, 16, 32
        y = features[-1]
        skips: list[torch.Tensor | None] = [*features[-2::-1], None]
        for block, skip in zip(self.blocks, skips, strict=True):
            y = block(y, skip)
        return self.classifier(y)  # (N, K, H, W)
