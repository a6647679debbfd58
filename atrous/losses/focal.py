"""Focal loss (`--loss focal`; Lin et al., ICCV 2017)."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from atrous.errors import UserError
from atrous.losses.base import ALL_TASKS, BatchTotals, SegmentationLoss, divide, labels_of
from atrous.losses.registry import register_loss


@register_loss("focal", weighted=True)
class FocalLoss(SegmentationLoss):
    """Focal loss (Lin et al., ICCV 2017, Eq. 4): -(1 - p_t)^gamma log p_t per labelled pixel,
    times the class weight when given (the paper's alpha_t), averaged as cross-entropy is.

    Binary and multilabel tasks: the paper's sigmoid form (Eq. 5) on each output, p_t the
    sigmoid's probability of the true value, `alpha` (0..1, off by default) weighting positives
    by alpha and negatives by 1 - alpha; mean over the labelled (pixel, label) pairs, as smp's
    FocalLoss(mode="binary"/"multilabel")."""

    tasks = ALL_TASKS

    def __init__(self, gamma: float = 2.0, alpha: float | None = None, **kwargs) -> None:
        super().__init__(**kwargs)
        self.gamma, self.alpha = gamma, alpha
        if alpha is not None and not self.sigmoid:
            raise ValueError("alpha applies to the binary and multilabel tasks; use class weights here")

    @classmethod
    def check_options(cls, options: dict[str, Any]) -> None:
        alpha = options.get("alpha")
        if alpha is not None and (isinstance(alpha, bool) or not isinstance(alpha, int | float) or not 0 <= alpha <= 1):
            raise UserError(f"loss_options alpha must be in [0, 1], got {alpha!r}", argument="loss_options")

    def __call__(self, logits: torch.Tensor, target: torch.Tensor, totals: BatchTotals) -> torch.Tensor:
        if self.sigmoid:
            return divide(self._sigmoid_total(logits, target), totals.pixel_weight)
        valid, safe = labels_of(target, self.ignore_index)
        log_p = F.log_softmax(logits.float(), dim=1).gather(1, safe[:, None])[:, 0]  # (n, H, W)
        modulating = (1 - log_p.exp()).clamp(min=0) ** self.gamma
        total = -(modulating * log_p * self._pixel_weights(valid, safe)).sum()
        return divide(total, totals.pixel_weight)

    def _sigmoid_total(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        logits, truth, valid = self.planes(logits, target)
        log_loss = F.binary_cross_entropy_with_logits(logits, truth, reduction="none")  # -log p_t
        terms = (1 - torch.exp(-log_loss)).clamp(min=0) ** self.gamma * log_loss
        if self.alpha is not None:
            terms = terms * (self.alpha * truth + (1 - self.alpha) * (1 - truth))
        return (terms * valid).sum()

