"""Cross-entropy (`--loss ce`), the loss of every paper in the family."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from atrous.errors import UserError
from atrous.losses.base import ALL_TASKS, BatchTotals, SegmentationLoss, divide
from atrous.losses.registry import register_loss


@register_loss("ce", weighted=True)
class CrossEntropy(SegmentationLoss):
    """Cross-entropy, mean over labelled pixels (weighted by class when given), void ignored.

    `smoothing` (label smoothing, Szegedy et al., CVPR 2016, Sec. 7; `--loss-opt
    smoothing=0.1`): the target is (1 - smoothing) on the true class plus smoothing / K on
    every class, as torch.nn.CrossEntropyLoss(label_smoothing=...) defines it; with class
    weights, each class's term carries its own weight, and the mean is still over the true
    classes' weights.

    Binary and multilabel tasks: binary cross-entropy on each output's sigmoid (smp's
    SoftBCEWithLogitsLoss), mean over the labelled (pixel, label) pairs; `pos_weight` (`--loss-opt
    pos_weight=3`) multiplies the positive term (torch's BCEWithLogitsLoss(pos_weight=...)), and
    `smoothing` makes the targets 1 - smoothing and smoothing (smp's smooth_factor)."""

    tasks = ALL_TASKS

    def __init__(self, smoothing: float = 0.0, pos_weight: float = 1.0, **kwargs) -> None:
        super().__init__(**kwargs)
        self.smoothing = float(smoothing)
        self.pos_weight = float(pos_weight)
        if self.pos_weight != 1.0 and not self.sigmoid:
            raise ValueError("pos_weight applies to the binary and multilabel tasks; use class weights here")

    @classmethod
    def check_options(cls, options: dict[str, Any]) -> None:
        smoothing = options.get("smoothing", 0.0)
        if not 0.0 <= smoothing < 1.0:
            raise UserError(f"loss_options smoothing must be in [0, 1), got {smoothing}", argument="loss_options")
        if options.get("pos_weight", 1.0) <= 0:
            raise UserError(f"loss_options pos_weight must be positive, got {options['pos_weight']}",
                            argument="loss_options")

    def __call__(self, logits: torch.Tensor, target: torch.Tensor, totals: BatchTotals) -> torch.Tensor:
        if self.sigmoid:
            logits, truth, valid = self.planes(logits, target)
            truth = truth * (1 - self.smoothing) + (1 - truth) * self.smoothing
            pos_weight = torch.tensor(self.pos_weight, device=logits.device)
            terms = F.binary_cross_entropy_with_logits(logits, truth, pos_weight=pos_weight, reduction="none")
            return divide((terms * valid).sum(), totals.pixel_weight)
        weights = None if self.class_weights is None else self.class_weights.to(logits.device, torch.float32)
        total = F.cross_entropy(logits.float(), target, weight=weights, ignore_index=self.ignore_index,
                                reduction="sum", label_smoothing=self.smoothing)
        return divide(total, totals.pixel_weight)

