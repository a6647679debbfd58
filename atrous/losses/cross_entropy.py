"""Cross-entropy (`--loss ce`), the loss of every paper in the family."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from atrous.losses.base import BatchTotals, SegmentationLoss, divide
from atrous.losses.registry import register_loss


@register_loss("ce", weighted=True)
class CrossEntropy(SegmentationLoss):
    """Cross-entropy, mean over labelled pixels (weighted by class when given), void ignored."""

    def __call__(self, logits: torch.Tensor, target: torch.Tensor, totals: BatchTotals) -> torch.Tensor:
        weights = None if self.class_weights is None else self.class_weights.to(logits.device, torch.float32)
        total = F.cross_entropy(logits.float(), target, weight=weights, ignore_index=self.ignore_index,
                                reduction="sum")
        return divide(total, totals.pixel_weight)

