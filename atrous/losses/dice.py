"""Soft Dice (`--loss dice`; Milletari et al. 2016) and soft Jaccard (`--loss jaccard`) losses."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from atrous.losses.base import (
    ALL_TASKS,
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
    whole (micro-)batch, softmax probabilities p.

    Binary and multilabel tasks: p is each output's sigmoid, y its 0/1 label, the mean over the
    labels present in the batch, as smp's DiceLoss(mode="binary"/"multilabel", smooth=0) where
    every label is present (smp counts an absent label as a loss of 0 in its mean)."""

    tasks = ALL_TASKS

    def __call__(self, logits: torch.Tensor, target: torch.Tensor, totals: BatchTotals) -> torch.Tensor:
        overlap, predicted, labelled = self.region_sums(logits, target)
        present = labelled > 0
        if not bool(present.any()):
            return logits.sum() * 0.0
        score = self.score(overlap[present], predicted[present], labelled[present])
        return share_of_global(1 - score.mean(), totals)

    @staticmethod
    def score(overlap: torch.Tensor, predicted: torch.Tensor, labelled: torch.Tensor) -> torch.Tensor:
        """Dice of each class from its sums: 2 |P n Y| / (|P| + |Y|)."""
        return 2 * overlap / (predicted + labelled)

    def region_sums(self, logits: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """Per class (or label), over the labelled pixels of the micro-batch on every rank:
        sum(p y), sum(p) (both differentiable through this rank's part) and sum(y)."""
        if self.sigmoid:
            logits, truth, valid = self.planes(logits, target)
            probs = torch.sigmoid(logits) * valid  # (n, K, H, W)
        else:
            valid, safe = labels_of(target, self.ignore_index)
            probs = F.softmax(logits.float(), dim=1) * valid[:, None]  # (n, C, H, W)
            truth = F.one_hot(safe, logits.shape[1]).permute(0, 3, 1, 2).float() * valid[:, None]
        dims = (0, 2, 3)
        overlap = global_with_local_gradient(self.reduce, (probs * truth).sum(dims))  # (C,)
        predicted = global_with_local_gradient(self.reduce, probs.sum(dims))
        return overlap, predicted, self.reduce(truth.sum(dims))


@register_loss("jaccard")
class JaccardLoss(DiceLoss):
    """Soft Jaccard (IoU) loss (Rahman and Wang 2016): 1 - mean over the classes (labels)
    present of sum(p y) / (sum(p) + sum(y) - sum(p y)), summed as `dice` sums; smp's
    JaccardLoss(smooth=0) in each mode where every class is present."""

    @staticmethod
    def score(overlap: torch.Tensor, predicted: torch.Tensor, labelled: torch.Tensor) -> torch.Tensor:
        return overlap / (predicted + labelled - overlap)
