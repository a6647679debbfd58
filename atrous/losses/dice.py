"""Soft multi-class Dice loss (`--loss dice`; Milletari et al. 2016)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from atrous.losses.base import (
    BatchTotals,
    SegmentationLoss,
    global_with_local_gradient,
    labels_of,
    share_of_global,
)
from atrous.losses.registry import register_loss


@register_loss("dice")
class DiceLoss(SegmentationLoss):
    """Soft multi-class Dice (Milletari et al. 2016, V-Net, Eq. 1, without the squares of its
    denominator, as in most segmentation code): 1 - mean over the classes present in the
    labels of 2 sum(p_c y_c) / (sum(p_c) + sum(y_c)), sums over the labelled pixels of the
    whole (micro-)batch, softmax probabilities p."""

    def __call__(self, logits: torch.Tensor, target: torch.Tensor, totals: BatchTotals) -> torch.Tensor:
        valid, safe = labels_of(target, self.ignore_index)
        probs = F.softmax(logits.float(), dim=1) * valid[:, None]  # (n, C, H, W)
        truth = F.one_hot(safe, logits.shape[1]).permute(0, 3, 1, 2).float() * valid[:, None]
        dims = (0, 2, 3)
        overlap = global_with_local_gradient(self.reduce, (probs * truth).sum(dims))  # (C,)
        predicted = global_with_local_gradient(self.reduce, probs.sum(dims))
        labelled = self.reduce(truth.sum(dims))
        present = labelled > 0
        if not bool(present.any()):
            return logits.sum() * 0.0
        dice = 2 * overlap[present] / (predicted[present] + labelled[present])
        return share_of_global(1 - dice.mean(), totals)

