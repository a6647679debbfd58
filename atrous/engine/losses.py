"""Training losses (`--loss ce|ohem|dice|lovasz|focal`), normalised over the global batch.

A loss returns this rank's *share* of the loss of the whole global batch: the shares of all
ranks and micro-batches add up to the value one process computes on the whole batch, and so
do their gradients (DistributedDataParallel sums gradients over the ranks, see
atrous.engine.distributed). `reduce` sums a tensor over the ranks (the identity alone);
`BatchTotals` holds the global normalisers known before the forward pass.

How far each loss is independent of the number of ranks W and accumulation steps K:
- ce, focal: sums over pixels divided by the global sum of the class weights of the
  labelled pixels (their count without class weights): exact for any W and K.
- ohem: the pixels kept are chosen among all ranks' pixels of the micro-batch (a global
  threshold; the k-th smallest probability is found by bisection on all-reduced counts) and
  the loss is divided by their global weight: exact for any W. With K > 1 it is the mean of
  the K micro-batches' OHEM losses (choosing among all B images would need every
  micro-batch's forward pass before the first backward).
- dice: per-class sums all-reduced, so the loss is that of the whole micro-batch: exact for
  any W; with K > 1 the mean over micro-batches.
- lovasz, per image: the mean over the images of the global batch: exact for any W and K.
  lovasz, per batch: computed on each rank's own pixels (the Lovász extension sorts all
  pixels of the batch together; gathering them all would cost more than the loss is worth)
  and averaged over ranks and micro-batches: it depends on W and K.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

LOSSES = ("ce", "ohem", "dice", "lovasz", "focal")
WEIGHTED_LOSSES = ("ce", "ohem", "focal")  # those that take --class-weights

Reduce = Callable[[torch.Tensor], torch.Tensor]


def _alone(tensor: torch.Tensor) -> torch.Tensor:
    return tensor


@dataclass(frozen=True)
class BatchTotals:
    """What is known of the whole global batch (all ranks, all micro-batches) before the
    forward pass."""

    pixel_weight: float  # sum over labelled pixels of their class's weight (their count without weights)
    images: int  # images in the global batch
    world: int = 1  # ranks
    micro_batches: int = 1  # K of --grad-accum


def labelled_weight(target: torch.Tensor, class_weights: torch.Tensor | None, ignore_index: int = 255) -> torch.Tensor:
    """Sum over the labelled pixels of `target` of their class weight (float64 scalar)."""
    labelled = target[target != ignore_index]
    if class_weights is None:
        return torch.tensor(float(labelled.numel()), dtype=torch.float64, device=target.device)
    return class_weights.to(target.device, torch.float64)[labelled].sum()


def _labels(target: torch.Tensor, ignore_index: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(labelled mask, target with void replaced by class 0 so that it can index)."""
    valid = target != ignore_index
    return valid, target.masked_fill(~valid, 0)


def _divide(total: torch.Tensor, denominator: float) -> torch.Tensor:
    """total / denominator; zero (still attached to the graph) when nothing is labelled."""
    return total / denominator if denominator > 0 else total * 0.0


def _global_with_local_gradient(reduce: Reduce, local: torch.Tensor) -> torch.Tensor:
    """The sum over ranks of `local`, through which only this rank's part is differentiated:
    summing the ranks' gradients (DDP) then gives the gradient of a function of the total."""
    return local + (reduce(local.detach().clone()) - local.detach())


def _share_of_global(loss: torch.Tensor, totals: BatchTotals) -> torch.Tensor:
    """A loss every rank computed whole (same value everywhere): its value split among the
    ranks, its gradient kept; averaged over micro-batches."""
    return (loss - loss.detach() * (1 - 1 / totals.world)) / totals.micro_batches


class SegmentationLoss:
    """(logits (n, C, H, W), target (n, H, W), totals) -> this rank's share (scalar)."""

    def __init__(self, *, ignore_index: int = 255, class_weights: torch.Tensor | None = None,
                 reduce: Reduce = _alone) -> None:
        self.ignore_index = ignore_index
        self.class_weights = class_weights
        self.reduce = reduce

    def __call__(self, logits: torch.Tensor, target: torch.Tensor, totals: BatchTotals) -> torch.Tensor:
        raise NotImplementedError

    def _pixel_weights(self, valid: torch.Tensor, safe: torch.Tensor) -> torch.Tensor:
        if self.class_weights is None:
            return valid.float()
        return self.class_weights.to(safe.device, torch.float32)[safe] * valid


class CrossEntropy(SegmentationLoss):
    """Cross-entropy, mean over labelled pixels (weighted by class when given), void ignored."""

    def __call__(self, logits: torch.Tensor, target: torch.Tensor, totals: BatchTotals) -> torch.Tensor:
        weights = None if self.class_weights is None else self.class_weights.to(logits.device, torch.float32)
        total = F.cross_entropy(logits.float(), target, weight=weights, ignore_index=self.ignore_index,
                                reduction="sum")
        return _divide(total, totals.pixel_weight)


class FocalLoss(SegmentationLoss):
    """Focal loss (Lin et al., ICCV 2017, Eq. 4): -(1 - p_t)^gamma log p_t per labelled pixel,
    times the class weight when given (the paper's alpha_t), averaged as cross-entropy is."""

    def __init__(self, gamma: float = 2.0, **kwargs) -> None:
        super().__init__(**kwargs)
        self.gamma = gamma

    def __call__(self, logits: torch.Tensor, target: torch.Tensor, totals: BatchTotals) -> torch.Tensor:
        valid, safe = _labels(target, self.ignore_index)
        log_p = F.log_softmax(logits.float(), dim=1).gather(1, safe[:, None])[:, 0]  # (n, H, W)
        modulating = (1 - log_p.exp()).clamp(min=0) ** self.gamma
        total = -(modulating * log_p * self._pixel_weights(valid, safe)).sum()
        return _divide(total, totals.pixel_weight)


class OhemCrossEntropy(SegmentationLoss):
    """Online hard example mining (the PSPNet / DeepLab Cityscapes practice, as in
    mmsegmentation's OHEMPixelSampler and the PSPNet/OCNet code): cross-entropy on the
    labelled pixels whose ground-truth probability is below `thresh` (0.7); when fewer than
    `min_kept` per image (100,000; times the images of the batch, at most all labelled
    pixels) are that hard, on the `min_kept` hardest instead (probability <= the k-th
    smallest; ties may add a few). Averaged over the kept pixels (their class weights)."""

    def __init__(self, thresh: float = 0.7, min_kept: int = 100_000, **kwargs) -> None:
        super().__init__(**kwargs)
        self.thresh, self.min_kept = thresh, min_kept

    def __call__(self, logits: torch.Tensor, target: torch.Tensor, totals: BatchTotals) -> torch.Tensor:
        valid, safe = _labels(target, self.ignore_index)
        log_p = F.log_softmax(logits.float(), dim=1).gather(1, safe[:, None])[:, 0]  # (n, H, W)
        kept = self.kept(log_p.detach().exp(), valid, images=target.shape[0] * totals.world)
        weights = self._pixel_weights(kept, safe)
        kept_weight = self.reduce(weights.sum().double()).item()
        return _divide(-(log_p * weights).sum(), kept_weight) / totals.micro_batches

    def kept(self, prob: torch.Tensor, valid: torch.Tensor, images: int) -> torch.Tensor:
        """Boolean mask of the pixels trained on, chosen among all ranks' pixels."""
        labelled = self._count(valid)
        wanted = min(self.min_kept * images, labelled)
        hard = valid & (prob < self.thresh)
        if self._count(hard) >= wanted:
            return hard
        cut = kth_smallest(prob[valid], wanted, self.reduce)
        return valid & (prob <= cut)

    def _count(self, mask: torch.Tensor) -> int:
        return int(self.reduce(mask.sum().double()).item())


ONE_BITS = 0x3F800000  # the bits of float32 1.0


def kth_smallest(probabilities: torch.Tensor, k: int, reduce: Reduce = _alone) -> float:
    """The k-th smallest (1-based) of the values in [0, 1] held by all ranks together, found by
    bisection on their float32 bit patterns (which order non-negative floats as their values
    do): about 30 rounds of one all-reduced count, whatever the number of values."""
    bits = probabilities.float().contiguous().view(torch.int32)
    low, high = 0, ONE_BITS
    while low < high:
        middle = (low + high) // 2
        if int(reduce((bits <= middle).sum().double()).item()) >= k:
            high = middle
        else:
            low = middle + 1
    return torch.tensor([low], dtype=torch.int32).view(torch.float32).item()


class DiceLoss(SegmentationLoss):
    """Soft multi-class Dice (Milletari et al. 2016, V-Net, Eq. 1, without the squares of its
    denominator, as in most segmentation code): 1 - mean over the classes present in the
    labels of 2 sum(p_c y_c) / (sum(p_c) + sum(y_c)), sums over the labelled pixels of the
    whole (micro-)batch, softmax probabilities p."""

    def __call__(self, logits: torch.Tensor, target: torch.Tensor, totals: BatchTotals) -> torch.Tensor:
        valid, safe = _labels(target, self.ignore_index)
        probs = F.softmax(logits.float(), dim=1) * valid[:, None]  # (n, C, H, W)
        truth = F.one_hot(safe, logits.shape[1]).permute(0, 3, 1, 2).float() * valid[:, None]
        dims = (0, 2, 3)
        overlap = _global_with_local_gradient(self.reduce, (probs * truth).sum(dims))  # (C,)
        predicted = _global_with_local_gradient(self.reduce, probs.sum(dims))
        labelled = self.reduce(truth.sum(dims))
        present = labelled > 0
        if not bool(present.any()):
            return logits.sum() * 0.0
        dice = 2 * overlap[present] / (predicted[present] + labelled[present])
        return _share_of_global(1 - dice.mean(), totals)


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


class LovaszSoftmax(SegmentationLoss):
    """Lovász-softmax loss (Berman, Rannen Triki, Blaschko, CVPR 2018), void ignored, over the
    classes present: `per_image` averages the loss of each image (the reference code's
    per_image=True), otherwise one loss over all pixels of the batch (per_image=False)."""

    def __init__(self, per_image: bool = False, **kwargs) -> None:
        super().__init__(**kwargs)
        self.per_image = per_image

    def __call__(self, logits: torch.Tensor, target: torch.Tensor, totals: BatchTotals) -> torch.Tensor:
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


def build_loss(
    name: str,
    *,
    ignore_index: int = 255,
    class_weights: torch.Tensor | None = None,
    reduce: Reduce = _alone,
    ohem_thresh: float = 0.7,
    ohem_min_kept: int = 100_000,
    focal_gamma: float = 2.0,
    lovasz_per_image: bool = False,
) -> SegmentationLoss:
    """The loss called `name` (one of LOSSES)."""
    if name not in LOSSES:
        raise ValueError(f"unknown loss '{name}', expected one of {LOSSES}")
    if class_weights is not None and name not in WEIGHTED_LOSSES:
        raise ValueError(f"class weights apply to {', '.join(WEIGHTED_LOSSES)}, not to {name}")
    common = dict(ignore_index=ignore_index, class_weights=class_weights, reduce=reduce)
    if name == "ohem":
        return OhemCrossEntropy(ohem_thresh, ohem_min_kept, **common)
    if name == "focal":
        return FocalLoss(focal_gamma, **common)
    if name == "dice":
        return DiceLoss(**common)
    if name == "lovasz":
        return LovaszSoftmax(lovasz_per_image, **common)
    return CrossEntropy(**common)


def total_loss(
    loss: SegmentationLoss,
    outputs: dict[str, torch.Tensor],
    target: torch.Tensor,
    aux_weights: dict[str, float],
    totals: BatchTotals,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """`loss` on "out" plus each auxiliary output times its weight (PSPNet's 0.4, ...).
    Returns the share to back-propagate and each output's (detached) share."""
    parts: dict[str, torch.Tensor] = {}
    total = None
    for key, logits in outputs.items():
        weight = 1.0 if key == "out" else aux_weights.get(key, 0.0)
        if weight == 0.0:
            continue
        share = loss(logits, target, totals)
        parts[key] = share.detach()
        total = weight * share if total is None else total + weight * share
    return total, parts
