"""The discriminator of adversarial training for segmentation: Luc, Couprie, Chintala,
Verbeek, "Semantic Segmentation using Adversarial Networks", NIPS Workshop 2016.

The discriminator ("adversarial network", Sec. 3) tells ground-truth label maps from the
segmenter's, given the image. Its input is one of the paper's three encodings (Sec. 3.2),
`encoding`:
- "product" (the default, the one the paper uses on Pascal VOC): each of the C
  class-probability maps multiplies the RGB image, giving 3C channels, so that the network
  sees the image through each label's mask;
- "basic": the label maps as they are, beside the image (3 + C channels stacked; the paper's
  Stanford Background network gives image and label map separate first layers);
- "scaling": as "basic", with the ground truth softened so that it cannot be told from the
  segmenter's maps by its values alone: the true class l gets max(tau, s_l) (tau = 0.9) and
  every other class c its predicted share of the rest, s_c (1 - that) / (1 - s_l).
The network follows the paper's
Pascal VOC discriminator ("LargeFOV-light"-like, Sec. 4.2): 3x3 convolutions of widths
96-128-128, max pool, 256-256, max pool, 512, then a 3x3 conv to one channel averaged over
the image into a single "real" logit per sample. Layer widths are the `widths` option.

Not registered as a segmentation model: it is used by atrous.training.adversarial.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

# widths of the 3x3 convolutions, "M" for a 2x2 max pool
DEFAULT_WIDTHS: tuple[int | str, ...] = (96, 128, 128, "M", 256, 256, "M", 512)
ENCODINGS = ("product", "basic", "scaling")
SCALING_TAU = 0.9


def product_encoding(images: torch.Tensor, label_maps: torch.Tensor) -> torch.Tensor:
    """Luc et al., Sec. 3.2, "product": (N, 3, H, W) x (N, C, H, W) -> (N, 3C, H, W), channel
    3c + k being image channel k masked by the probability of class c."""
    encoded = label_maps.unsqueeze(2) * images.unsqueeze(1)  # (N, C, 3, H, W)
    return encoded.flatten(1, 2)


def label_maps_from_targets(
    targets: torch.Tensor, fill: torch.Tensor, ignore_index: int = 255
) -> torch.Tensor:
    """One-hot ground truth (N, C, H, W) from (N, H, W) class indices; void pixels take the
    values of `fill` (the segmenter's probabilities) so that they carry no real/fake signal."""
    num_classes = fill.shape[1]
    void = targets == ignore_index
    one_hot = F.one_hot(targets.masked_fill(void, 0), num_classes).permute(0, 3, 1, 2)
    return torch.where(void.unsqueeze(1), fill, one_hot.to(fill.dtype))


def scaled_ground_truth(one_hot: torch.Tensor, probabilities: torch.Tensor, tau: float = SCALING_TAU) -> torch.Tensor:
    """Luc et al., Sec. 3.2, "scaling": (N, C, H, W) one-hot ground truth -> the true class l at
    max(tau, s_l), every other class c at s_c (1 - max(tau, s_l)) / (1 - s_l); each pixel still
    sums to 1. Pixels that are not one-hot (void: the segmenter's own maps) are kept."""
    true = (one_hot * probabilities).sum(dim=1, keepdim=True)  # s_l, (N, 1, H, W)
    top = torch.clamp(true, min=tau)
    rest = probabilities * (1 - top) / (1 - true).clamp_min(1e-12)
    scaled = torch.where(one_hot > 0.5, top, rest)
    hard = (one_hot == 1).any(dim=1, keepdim=True)
    return torch.where(hard, scaled, one_hot)


class SegmentationDiscriminator(nn.Module):
    """(image, label probabilities) -> one logit per sample, "real" being positive."""

    def __init__(
        self,
        num_classes: int,
        *,
        in_channels: int = 3,
        widths: Sequence[int | str] = DEFAULT_WIDTHS,
        encoding: str = "product",
    ) -> None:
        super().__init__()
        if encoding not in ENCODINGS:
            raise ValueError(f"encoding must be one of {', '.join(ENCODINGS)}, got '{encoding}'")
        self.encoding = encoding
        layers: list[nn.Module] = []
        channels = in_channels * num_classes if encoding == "product" else in_channels + num_classes
        for width in widths:
            if width == "M":
                layers.append(nn.MaxPool2d(2, ceil_mode=True))
                continue
            layers += [nn.Conv2d(channels, int(width), 3, padding=1), nn.ReLU(inplace=True)]
            channels = int(width)
        layers.append(nn.Conv2d(channels, 1, 3, padding=1))
        self.net = nn.Sequential(*layers)
        self.num_classes = num_classes

    def forward(self, images: torch.Tensor, label_maps: torch.Tensor) -> torch.Tensor:
        if self.encoding == "product":
            encoded = product_encoding(images, label_maps)  # (N, 3C, H, W)
        else:  # basic, scaling: (N, 3 + C, H, W)
            encoded = torch.cat([images, label_maps.to(images.dtype)], dim=1)
        scores = self.net(encoded)  # (N, 1, H/4, W/4)
        return scores.mean(dim=(1, 2, 3))  # (N,)
