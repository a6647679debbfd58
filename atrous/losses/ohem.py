"""Online hard example mining (`--loss ohem`), cross-entropy on the hardest pixels."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from atrous.losses.base import BatchTotals, Reduce, SegmentationLoss, alone, divide, labels_of
from atrous.losses.registry import register_loss


@register_loss("ohem", weighted=True)
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
        valid, safe = labels_of(target, self.ignore_index)
        log_p = F.log_softmax(logits.float(), dim=1).gather(1, safe[:, None])[:, 0]  # (n, H, W)
        kept = self.kept(log_p.detach().exp(), valid, images=target.shape[0] * totals.world)
        weights = self._pixel_weights(kept, safe)
        kept_weight = self.reduce(weights.sum().double()).item()
        return divide(-(log_p * weights).sum(), kept_weight) / totals.micro_batches

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


def kth_smallest(probabilities: torch.Tensor, k: int, reduce: Reduce = alone) -> float:
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

