"""Running one network over several input scales (DeepLab v2 Sec. 3.3 / 4.1, "MSC";
Attention-to-Scale, Chen et al. CVPR 2016, Sec. 3.1): resize, run, resize back.

Traceable for export: under `torch.jit.trace` the sides of a tensor are 0-dim tensors, so
the size arithmetic below is written with operations that stay in the graph (no Python
`round` or `int`), and resizing never depends on a comparison of sizes made at trace time."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F

from atrous.models.base import pad_to_multiple


def scale_key(scale: float) -> str:
    """The output key of one scale's logits: "scale_1", "scale_0.75", "scale_0.5"."""
    return f"scale_{scale:g}"


def resize(x: torch.Tensor, size: Sequence[int | torch.Tensor]) -> torch.Tensor:
    """Bilinear resize to `size`; a no-op at the same size (while tracing it always resizes:
    the sizes compared at trace time may differ at run time)."""
    if not torch.jit.is_tracing() and tuple(x.shape[-2:]) == tuple(size):
        return x
    return F.interpolate(x, size=tuple(size), mode="bilinear", align_corners=False)


def scaled_length(length: int | torch.Tensor, scale: float) -> int | torch.Tensor:
    """max(1, round(length * scale)), Python's rounding (half to even, as torch.round does);
    a 0-dim tensor while tracing."""
    if isinstance(length, torch.Tensor):
        return torch.round(length.double() * scale).clamp(min=1).long()
    return max(1, round(length * scale))


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
        size = (scaled_length(x.shape[-2], scale), scaled_length(x.shape[-1], scale))
        scaled = x if scale == 1 else resize(x, size)
        padded = pad_to_multiple(scaled, divisor)
        maps = network(padded)
        stride = padded.shape[-1] // maps[0].shape[-1]  # the network's output stride
        valid = [(side + stride - 1) // stride for side in size]  # ceil(side / stride)
        maps = tuple(m[..., : valid[0], : valid[1]] for m in maps)
        reference = reference or tuple(maps[0].shape[-2:])
        results.append(tuple(resize(m, reference) for m in maps))
    return results
