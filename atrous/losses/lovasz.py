"""Lovász-softmax loss (`--loss lovasz`; Berman, Rannen Triki, Blaschko, CVPR 2018)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from atrous.losses.base import ALL_TASKS, BatchTotals, SegmentationLoss
from atrous.losses.registry import register_loss


def lovasz_gradient(truth_sorted: torch.Tensor) -> torch.Tensor:
    """Gradient of the Lovász extension of the Jaccard loss w.r.t. sorted errors (Berman et
    al., CVPR 2018, Eq. 8 and Alg. 1): the Jaccard loss of each prefix, differenced."""
    positives = truth_sorted.sum()
    intersection = positives - truth_sorted.cumsum(0)
    union = positives + (1 - truth_sorted).cumsum(0)
    jaccard = 1 - intersection / union
    return torch.cat([jaccard[:1], jaccard[1:] - jaccard[:-1]])


def lovasz_softmax_flat(probs: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Lovász-softmax over pixels (P, C) with labels (P,): the mean over the classes present
    in `labels` of the Lovász extension of 1 - IoU applied to |1[y = c] - p_c| (Eq. 9-10)."""
    losses = []
    for c in range(probs.shape[1]):
        truth = (labels == c).float()
        if not bool(truth.any()):
            continue
        errors = (truth - probs[:, c]).abs()
        errors_sorted, order = torch.sort(errors, descending=True)
        losses.append(torch.dot(errors_sorted, lovasz_gradient(truth[order])))
    return torch.stack(losses).mean() if losses else probs.sum() * 0.0


def lovasz_hinge_flat(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Lovász hinge over pixels (P,) of logits with 0/1 labels (Berman et al., Eq. 11-12): the
    Lovász extension of 1 - IoU applied to the hinge errors max(0, 1 - z s), s = +-1."""
    signs = 2 * labels.float() - 1
    errors = 1 - logits * signs
    errors_sorted, order = torch.sort(errors, descending=True)
    return torch.dot(F.relu(errors_sorted), lovasz_gradient(labels.float()[order]))


@register_loss("lovasz")
class LovaszSoftmax(SegmentationLoss):
    """Lovász-softmax loss (Berman, Rannen Triki, Blaschko, CVPR 2018), void ignored, over the
    classes present: `per_image` averages the loss of each image (the reference code's
    per_image=True), otherwise one loss over all pixels of the batch (per_image=False).

    Binary and multilabel tasks: the Lovász hinge (Eq. 11-12) on each output's logits, the
    mean over the labels (smp's LovaszLoss(mode="binary"); for multilabel smp pools
    every label's pixels into one hinge instead)."""

    tasks = ALL_TASKS

    def __init__(self, per_image: bool = False, **kwargs) -> None:
        super().__init__(**kwargs)
        self.per_image = per_image

    def __call__(self, logits: torch.Tensor, target: torch.Tensor, totals: BatchTotals) -> torch.Tensor:
        if self.sigmoid:
            logits, target = logits.float(), target[:, None] if target.ndim == logits.ndim - 1 else target
            if self.per_image:
                losses = [self._hinge(z[None], t[None]) for z, t in zip(logits, target, strict=True)]
                return torch.stack(losses).sum() / totals.images
            return self._hinge(logits, target) / (totals.world * totals.micro_batches)
        probs = F.softmax(logits.float(), dim=1)
        if self.per_image:
            losses = [self._flat(p[None], t[None]) for p, t in zip(probs, target, strict=True)]
            return torch.stack(losses).sum() / totals.images
        return self._flat(probs, target) / (totals.world * totals.micro_batches)

    def _flat(self, probs: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        flat = probs.permute(0, 2, 3, 1).reshape(-1, probs.shape[1])  # (P, C)
        labels = target.reshape(-1)
        valid = labels != self.ignore_index
        return lovasz_softmax_flat(flat[valid], labels[valid])


    def _hinge(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """(n, K, H, W) logits, 0/1/void labels: the mean over the labels of each one's hinge (a
        label absent from the labels still counts, as in Berman et al.'s code and smp)."""
        losses = []
        for k in range(logits.shape[1]):
            labels, scores = target[:, k].reshape(-1), logits[:, k].reshape(-1)
            valid = labels != self.ignore_index
            if bool(valid.any()):
                losses.append(lovasz_hinge_flat(scores[valid], labels[valid]))
        return torch.stack(losses).mean() if losses else logits.sum() * 0.0
