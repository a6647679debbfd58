"""What every loss shares: the global batch's normalisers and the base class.

Losses are normalised over the global batch.

A loss returns this rank's *share* of the loss of the whole global batch: the shares of all
ranks and micro-batches add up to the value one process computes on the whole batch, and so
do their gradients (DistributedDataParallel sums gradients over the ranks, see
atrous.runtime.distributed). `reduce` sums a tensor over the ranks (the identity alone);
`BatchTotals` holds the global normalisers known before the forward pass.

How far each loss is independent of the number of ranks W and accumulation steps K:
- ce, focal: sums over pixels (binary, multilabel: over pixels and labels) divided by the global sum of the class weights of the
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
from typing import Any

import torch

Reduce = Callable[[torch.Tensor], torch.Tensor]
ALL_TASKS = ("multiclass", "binary", "multilabel")


def alone(tensor: torch.Tensor) -> torch.Tensor:
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
    """Sum over the labelled pixels of `target` of their class weight (float64 scalar); for a
    multilabel target (n, K, H, W), the count of its labelled (pixel, label) pairs."""
    labelled = target[target != ignore_index]
    if class_weights is None:
        return torch.tensor(float(labelled.numel()), dtype=torch.float64, device=target.device)
    return class_weights.to(target.device, torch.float64)[labelled].sum()


def labels_of(target: torch.Tensor, ignore_index: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(labelled mask, target with void replaced by class 0 so that it can index)."""
    valid = target != ignore_index
    return valid, target.masked_fill(~valid, 0)


def divide(total: torch.Tensor, denominator: float) -> torch.Tensor:
    """total / denominator; zero (still attached to the graph) when nothing is labelled."""
    return total / denominator if denominator > 0 else total * 0.0


def global_with_local_gradient(reduce: Reduce, local: torch.Tensor) -> torch.Tensor:
    """The sum over ranks of `local`, through which only this rank's part is differentiated:
    summing the ranks' gradients (DDP) then gives the gradient of a function of the total."""
    return local + (reduce(local.detach().clone()) - local.detach())


def share_of_global(loss: torch.Tensor, totals: BatchTotals) -> torch.Tensor:
    """A loss every rank computed whole (same value everywhere): its value split among the
    ranks, its gradient kept; averaged over micro-batches."""
    return (loss - loss.detach() * (1 - 1 / totals.world)) / totals.micro_batches


class SegmentationLoss:
    """(logits (n, C, H, W), target (n, H, W), totals) -> this rank's share (scalar).

    `task` (atrous.data.tasks): multiclass (softmax over C), binary (C = 1, target (n, H, W) of
    0/1) or multilabel (C sigmoids, target (n, C, H, W) of 0/1); void is `ignore_index` in each.
    Each loss follows segmentation_models_pytorch's `mode=` for the binary and multilabel tasks;
    `tasks` lists the tasks a loss takes (a loss registered by name takes multiclass alone)."""

    tasks: tuple[str, ...] = ("multiclass",)

    def __init__(self, *, ignore_index: int = 255, class_weights: torch.Tensor | None = None,
                 reduce: Reduce = alone, task: str = "multiclass") -> None:
        self.ignore_index = ignore_index
        self.class_weights = class_weights
        self.reduce = reduce
        self.task = task

    @property
    def sigmoid(self) -> bool:
        """True for the binary and multilabel tasks: each output is its own sigmoid."""
        return self.task != "multiclass"

    def planes(self, logits: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """For the sigmoid tasks: (float logits (n, K, H, W), 0/1 truth with void as 0, labelled
        mask), the binary task's (n, H, W) target made (n, 1, H, W)."""
        target = target[:, None] if target.ndim == logits.ndim - 1 else target
        if target.shape != logits.shape:
            raise ValueError(f"{self.task} target of shape {tuple(target.shape)} does not fit the logits "
                             f"{tuple(logits.shape)}")
        valid = target != self.ignore_index
        return logits.float(), (target * valid).float(), valid

    def __call__(self, logits: torch.Tensor, target: torch.Tensor, totals: BatchTotals) -> torch.Tensor:
        raise NotImplementedError

    @classmethod
    def check_options(cls, options: dict[str, Any]) -> None:
        """UserError (one line) for an option value out of its range; the registry has checked
        names and types. Called on the options before training starts."""

    def _pixel_weights(self, valid: torch.Tensor, safe: torch.Tensor) -> torch.Tensor:
        if self.class_weights is None:
            return valid.float()
        return self.class_weights.to(safe.device, torch.float32)[safe] * valid


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
