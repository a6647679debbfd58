"""Several score heads, each scored against its own labels: FCN's two-headed SIFT Flow net
(Long et al., CVPR 2015, Sec. 5: "a two-headed version of FCN-16s with semantic and geometric
prediction layers and losses"), `create_model("fcn8s", 33, extra_heads={"geometric": 3})`
trained on `SiftFlow(root, split, labels="both")`, whose masks stack the two label maps.

Each head's loss is the given loss (e.g. `build_loss("ce")`) normalised over that head's own
labelled pixels of the batch, and the heads' losses are summed with equal weight, as the
reference net sums its two SoftmaxWithLoss layers. The normalisers here are this batch's; the
trainer does the same over the global batch (each plane's labelled pixels across processes).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch

from atrous.losses.base import BatchTotals, SegmentationLoss, labelled_weight


def multi_head_loss(
    loss: SegmentationLoss,
    outputs: Mapping[str, torch.Tensor],
    masks: torch.Tensor,
    heads: Sequence[str] = ("out", "geometric"),
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The sum over heads of `loss(outputs[head], masks[:, i])`, and each head's (detached) loss.

    outputs: name -> logits (N, K_head, H, W), as `model(x, return_aux=True)` gives them;
    masks: (N, len(heads), H, W) int64, plane i the labels of heads[i] (void = the loss's
    ignore_index)."""
    if masks.ndim != 4 or masks.shape[1] != len(heads):
        raise ValueError(f"masks must be (N, {len(heads)}, H, W), one plane per head {tuple(heads)}; "
                         f"got {tuple(masks.shape)}")
    if loss.class_weights is not None:
        raise ValueError("class weights are per head: build one loss per head for weighted losses")
    missing = [head for head in heads if head not in outputs]
    if missing:
        raise ValueError(f"no output '{missing[0]}' (the model's: {', '.join(outputs)})")
    total: torch.Tensor | None = None
    parts: dict[str, torch.Tensor] = {}
    for plane, head in enumerate(heads):
        target = masks[:, plane]
        totals = BatchTotals(float(labelled_weight(target, None, loss.ignore_index)), masks.shape[0])
        share = loss(outputs[head], target, totals)
        parts[head] = share.detach()
        total = share if total is None else total + share
    assert total is not None
    return total, parts
