"""The learning-rate schedule (DeepLab's poly policy with a linear warm-up) and where the loss
is scored (--loss-stride: DeepLab v1/v2's labels subsampled to the score map's stride)."""

from __future__ import annotations

import torch


def poly_lr(base_lr: float, step: int, total: int, power: float, warmup: int = 0) -> float:
    """DeepLab's poly policy: base * (1 - step / total) ** power, after a linear warm-up."""
    if step < warmup:
        return base_lr * (step + 1) / warmup
    return base_lr * (1 - step / total) ** power


def labels_at_stride(masks: torch.Tensor, stride: int) -> torch.Tensor:
    """(N, H, W) labels -> (N, ceil(H/s), ceil(W/s)): the label at the centre of each s x s cell
    (the bottom-right of the four central pixels when s is even); `masks` itself for s = 1."""
    if stride == 1:
        return masks
    height, width = masks.shape[-2:]
    rows, cols = (_cell_centres(side, -(-side // stride), masks.device) for side in (height, width))
    return masks[..., rows[:, None], cols]


def _cell_centres(side: int, cells: int, device: torch.device) -> torch.Tensor:
    centres = ((torch.arange(cells, device=device) + 0.5) * side / cells).long()
    return centres.clamp(max=side - 1)


def at_loss_stride(outputs: dict[str, torch.Tensor], masks: torch.Tensor,
                   stride: int) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """The outputs and labels the loss scores at `stride` (--loss-stride): every output resized
    bilinearly to the subsampled labels' grid, which samples it at the cells' centres. For a
    model whose score map has this stride, that gives its scores up to the smoothing of the
    round trip (bilinear x s, then back: about 6 % of each neighbour mixed in at s = 8); the
    paper's Caffe code scores the score map itself."""
    if stride == 1:
        return outputs, masks
    labels = labels_at_stride(masks, stride)
    size = labels.shape[-2:]
    resized = {key: torch.nn.functional.interpolate(value, size=size, mode="bilinear", align_corners=False)
               for key, value in outputs.items()}
    return resized, labels
