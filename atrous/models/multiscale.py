"""Running one network over several input scales (DeepLab v2 Sec. 3.3 / 4.1, "MSC";
Attention-to-Scale, Chen et al. CVPR 2016, Sec. 3.1): resize, run, resize back."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F

from atrous.models.base import pad_to_multiple


def scale_key(scale: float) -> str:
    """The output key of one scale's logits: "scale_1", "scale_0.75", "scale_0.5"."""
    return f"scale_{scale:g}"


def resize(x: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    return F.interpolate(x, size=tuple(size), mode="bilinear", align_corners=False)


def run_at_scales(
    network: Callable[[torch.Tensor], tuple[torch.Tensor, ...]],
    x: torch.Tensor,
    scales: Sequence[float],
    divisor: int,
) -> list[tuple[torch.Tensor, ...]]:
    """`network` on `x` resized by each scale (zero-padded to `divisor`); every returned map is
    cropped to the valid region and resized to the size of the first scale's maps."""
    results: list[tuple[torch.Tensor, ...]] = []
    reference: tuple[int, int] | None = None
    for scale in scales:
        size = (max(1, round(x.shape[-2] * scale)), max(1, round(x.shape[-1] * scale)))
        scaled = resize(x, size)
        padded = pad_to_multiple(scaled, divisor)
        maps = network(padded)
        stride = padded.shape[-1] / maps[0].shape[-1]
        valid = (int(-(-size[0] // stride)), int(-(-size[1] // stride)))  # ceil
        maps = tuple(m[..., : valid[0], : valid[1]] for m in maps)
        reference = reference or tuple(maps[0].shape[-2:])
        results.append(tuple(resize(m, reference) for m in maps))
    return results
