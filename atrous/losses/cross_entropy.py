"""Cross-entropy (`--loss ce`), the loss of every paper in the family."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from atrous.errors import UserError
from atrous.losses.base import BatchTotals, SegmentationLoss, divide
from atrous.losses.registry import register_loss


@register_loss("ce", weighted=True)
class CrossEntropy(SegmentationLoss):
    """Cross-entropy, mean over labelled pixels (weighted by class when given), void ignored.

    `smoothing` (label smoothing, Szegedy et al., CVPR 2016, Sec. 7; `--loss-opt
    smoothing=0.1`): the target is (1 - smoothing) on the true class plus smoothing / K on
    every class, as torch.nn.CrossEntropyLoss(label_smoothing=...) defines it; with class
    weights, each class's term carries its own weight, and the mean is still over the true
    classes' weights."""

    def __init__(self, smoothing: float = 0.0, **kwargs) -> None:
        super().__init__(**kwargs)
        self.smoothing = float(smoothing)

    @classmethod
    def check_options(cls, options: dict[str, Any]) -> None:
        smoothing = options.get("smoothing", 0.0)
        if not 0.0 <= smoothing < 1.0:
            raise UserError(f"--loss-opt smoothing must be in [0, 1), got {smoothing}")

    def __call__(self, logits: torch.Tensor, target: torch.Tensor, totals: BatchTotals) -> torch.Tensor:
        weights = None if self.class_weights is None else self.class_weights.to(logits.device, torch.float32)
        total = F.cross_entropy(logits.float(), target, weight=weights, ignore_index=self.ignore_index,
                                reduction="sum", label_smoothing=self.smoothing)
        return divide(total, totals.pixel_weight)

