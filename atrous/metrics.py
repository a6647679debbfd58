"""Confusion-matrix metrics (Long et al., CVPR 2015, Sec. 5), per-label metrics of the binary and
multilabel tasks, and DeepLab's trimap band.

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


class LabelMetrics:
    """Per-label counts of the binary and multilabel tasks (atrous.data.tasks): true and false
    positives, false and true negatives of each label over its labelled pixels.

    `update(pred, target)`: (N, K, H, W) predictions of 0/1 (sigmoid > threshold) and targets of
    0/1 with `ignore_index` void (binary: K = 1). `compute()`: per label IoU (Jaccard), Dice (=F1),
    precision and recall, as torchmetrics' BinaryJaccardIndex, BinaryF1Score, BinaryPrecision
    and BinaryRecall define them, except that an undefined ratio (0/0: a label absent from both
    truth and prediction) is NaN and left out of the means, as ConfusionMatrix's IoU is. The keys
    ConfusionMatrix gives are there too, so that --save-best, trackers and tables take either:
    mIoU (the labels' mean IoU), mean_accuracy (mean recall), per_class_iou, per_class_accuracy
    (recall), pixel_accuracy (over every labelled (pixel, label) pair), fw_iou (IoU weighted by
    each label's positives)."""

    def __init__(self, num_labels: int, ignore_index: int = 255) -> None:
        if num_labels < 1:
            raise ValueError(f"num_labels must be positive, got {num_labels}")
        self.num_labels = num_labels
        self.ignore_index = ignore_index
        self.matrix = torch.zeros(num_labels, 4, dtype=torch.int64)  # per label: TP, FP, FN, TN

    def reset(self) -> None:
        self.matrix.zero_()

    def update(self, pred: torch.Tensor, target: torch.Tensor) -> None:
        if pred.shape != target.shape or pred.ndim < 2 or pred.shape[1] != self.num_labels:
            raise ValueError(f"prediction {tuple(pred.shape)} and target {tuple(target.shape)} must both be "
                             f"(N, {self.num_labels}, ...)")
        target = target.to(pred.device).long()
        valid = target != self.ignore_index
        if bool(((target != 0) & (target != 1) & valid).any()):
            raise ValueError(f"targets must be 0, 1 or {self.ignore_index}")
        truth, positive = target == 1, pred.long() == 1
        dims = [d for d in range(pred.ndim) if d != 1]
        counts = [(a & b & valid).sum(dims) for a, b in ((positive, truth), (positive, ~truth), (~positive, truth),
                                                          (~positive, ~truth))]
        self.matrix += torch.stack(counts, dim=1).cpu()

    def compute(self) -> dict:
        tp, fp, fn, tn = self.matrix.double().unbind(1)
        iou = tp / (tp + fp + fn)
        dice = 2 * tp / (2 * tp + fp + fn)
        precision, recall = tp / (tp + fp), tp / (tp + fn)
        total = self.matrix.sum()
        positives = tp + fn
        weights = positives / positives.sum() if positives.sum() > 0 else positives
        present = positives > 0
        return {
            "mIoU": _nanmean(iou), "mean_dice": _nanmean(dice), "mean_precision": _nanmean(precision),
            "mean_recall": _nanmean(recall), "mean_accuracy": _nanmean(recall),
            "pixel_accuracy": float((tp + tn).sum() / total) if total > 0 else float("nan"),
            "fw_iou": float((weights[present] * iou[present]).sum()) if total > 0 else float("nan"),
            "per_class_iou": _as_list(iou), "per_class_accuracy": _as_list(recall),
            "per_label_dice": _as_list(dice), "per_label_precision": _as_list(precision),
            "per_label_recall": _as_list(recall), "pixels": int(total),
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
