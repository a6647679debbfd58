"""Confusion-matrix metrics (Long et al., CVPR 2015, Sec. 5) and DeepLab's trimap band.

Rows of the matrix are ground truth, columns predictions. Classes that appear neither in
the ground truth nor in the predictions have an undefined IoU (NaN) and are left out of
the means, as in every common implementation.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


class ConfusionMatrix:
    """Accumulates a (num_classes x num_classes) confusion matrix over batches.

    `update(pred, target)`: int tensors of the same shape (any shape); pixels whose target
    is `ignore_index` are skipped. Targets outside 0..num_classes-1 raise a ValueError.
    """

    def __init__(self, num_classes: int, ignore_index: int = 255) -> None:
        if num_classes < 1:
            raise ValueError(f"num_classes must be positive, got {num_classes}")
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.matrix = torch.zeros(num_classes, num_classes, dtype=torch.int64)

    def reset(self) -> None:
        self.matrix.zero_()

    def update(self, pred: torch.Tensor, target: torch.Tensor) -> None:
        if pred.shape != target.shape:
            raise ValueError(f"prediction shape {tuple(pred.shape)} != target shape {tuple(target.shape)}")
        pred, target = pred.reshape(-1).long(), target.reshape(-1).long().to(pred.device)
        keep = target != self.ignore_index
        pred, target = pred[keep], target[keep]
        k = self.num_classes
        if target.numel() and (target.min() < 0 or target.max() >= k):
            raise ValueError(f"target labels must be in 0..{k - 1} or {self.ignore_index}")
        if pred.numel() and (pred.min() < 0 or pred.max() >= k):
            raise ValueError(f"predicted labels must be in 0..{k - 1}")
        counts = torch.bincount(target * k + pred, minlength=k * k).reshape(k, k)
        self.matrix += counts.cpu()

    def compute(self) -> dict:
        """mIoU, pixel_accuracy, mean_accuracy, fw_iou (fractions) and per-class lists."""
        m = self.matrix.double()
        true_positive = m.diag()
        gt_pixels = m.sum(dim=1)
        pred_pixels = m.sum(dim=0)
        union = gt_pixels + pred_pixels - true_positive
        iou = true_positive / union  # NaN where the class is absent from both
        accuracy = true_positive / gt_pixels  # NaN where the class is absent from the truth
        total = m.sum()
        freq = gt_pixels / total if total > 0 else gt_pixels
        present = gt_pixels > 0
        return {
            "mIoU": _nanmean(iou),
            "pixel_accuracy": float(true_positive.sum() / total) if total > 0 else float("nan"),
            "mean_accuracy": _nanmean(accuracy),
            "fw_iou": float((freq[present] * iou[present]).sum()) if total > 0 else float("nan"),
            "per_class_iou": _as_list(iou),
            "per_class_accuracy": _as_list(accuracy),
            "pixels": int(total),
        }


def _nanmean(values: torch.Tensor) -> float:
    valid = values[~values.isnan()]
    return float(valid.mean()) if valid.numel() else float("nan")


def _as_list(values: torch.Tensor) -> list[float | None]:
    return [None if v != v else float(v) for v in values.tolist()]


def trimap_mask(target: torch.Tensor, width: int, ignore_index: int = 255) -> torch.Tensor:
    """Pixels within `width` pixels (Chebyshev distance) of a label boundary, DeepLab's
    trimap band (Chen et al., ICLR 2015, Sec. 4.1). target: (N, H, W) or (H, W) -> bool."""
    squeeze = target.ndim == 2
    t = target[None] if squeeze else target
    t = t.float()[:, None]  # (N, 1, H, W)
    kernel = 2 * width + 1
    # a pixel is near a boundary when its neighbourhood holds more than one label
    neighbourhood_max = F.max_pool2d(t, kernel, stride=1, padding=width)
    neighbourhood_min = -F.max_pool2d(-t, kernel, stride=1, padding=width)
    band = (neighbourhood_max != neighbourhood_min)[:, 0] & (target if not squeeze else target[None]).ne(ignore_index)
    return band[0] if squeeze else band
