"""Focal loss (`--loss focal`; Lin et al., ICCV 2017)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from atrous.losses.base import BatchTotals, SegmentationLoss, divide, labels_of
from atrous.losses.registry import register_loss


@register_loss("focal", weighted=True)
class FocalLoss(SegmentationLoss):
    """Focal loss (Lin et al., ICCV 2017, Eq. 4): -(1 - p_t)^gamma log p_t per labelled pixel,
    times the class weight when given (the paper's alpha_t), averaged as cross-entropy is."""

    def __init__(self, gamma: float = 2.0, **kwargs) -> None:
        super().__init__(**kwargs)
        self.gamma = gamma

    def __call__(self, logits: torch.Tensor, target: torch.Tensor, totals: BatchTotals) -> torch.Tensor:
        valid, safe = labels_of(target, self.ignore_index)
        log_p = F.log_softmax(logits.float(), dim=1).gather(1, safe[:, None])[:, 0]  # (n, H, W)
        modulating = (1 - log_p.exp()).clamp(min=0) ** self.gamma
        total = -(modulating * log_p * self._pixel_weights(valid, safe)).sum()
        return divide(total, totals.pixel_weight)

