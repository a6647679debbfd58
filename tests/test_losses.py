"""The training losses against hand-computed values, and their normalisation over the global
batch (what makes them add up over ranks and micro-batches; the 2-process checks are in
tests/test_distributed.py)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from atrous.errors import UserError
from atrous.losses import (
    BatchTotals,
    build_loss,
    build_loss_options,
    kth_smallest,
    labelled_weight,
    total_loss,
)

LN2 = math.log(2)
VOID = 255


def logits_for(probabilities: list[list[float]]) -> torch.Tensor:
    """(1, C, 1, P) logits whose softmax over C is `probabilities` (P pixels of C values)."""
    p = torch.tensor(probabilities, dtype=torch.float64).T  # (C, P)
    return p.clamp_min(1e-30).log().float()[None, :, None, :]


def totals_of(target: torch.Tensor, class_weights: torch.Tensor | None = None) -> BatchTotals:
    return BatchTotals(float(labelled_weight(target, class_weights)), images=target.shape[0])


def loss_value(name: str, logits: torch.Tensor, target: torch.Tensor, **options) -> float:
    loss = build_loss(name, **options)
    return float(loss(logits, target, totals_of(target, options.get("class_weights"))))


# two labelled pixels and a void one: p(true) = 0.5 and 0.25
TWO_PIXELS = logits_for([[0.5, 0.5], [0.75, 0.25], [0.1, 0.9]])
TWO_TARGETS = torch.tensor([[[0, 1, VOID]]])


def test_cross_entropy_by_hand():
    # (-ln 0.5 - ln 0.25) / 2; with class weights (1, 3): (ln 2 + 3 ln 4) / (1 + 3)
    assert loss_value("ce", TWO_PIXELS, TWO_TARGETS) == pytest.approx(1.5 * LN2, rel=1e-6)
    weights = torch.tensor([1.0, 3.0])
    assert loss_value("ce", TWO_PIXELS, TWO_TARGETS, class_weights=weights) == pytest.approx(7 / 4 * LN2, rel=1e-6)


def test_label_smoothing_by_hand():
    # smoothing 0.2, K = 2: target (0.9, 0.1) on the true class and the other.
    # pixel 1 (0.5, 0.5): ln 2 whatever the target; pixel 2 (0.75, 0.25), true 1: 0.9 ln 4 - 0.1 ln 0.75
    expected = (LN2 + 0.9 * 2 * LN2 - 0.1 * math.log(0.75)) / 2
    assert loss_value("ce", TWO_PIXELS, TWO_TARGETS, smoothing=0.2) == pytest.approx(expected, rel=1e-6)
    # class weights (1, 3), each class's term times its weight, over the true classes' weights 1 + 3:
    # pixel 1: 0.8 * 1 ln 2 + 0.1 (1 + 3) ln 2; pixel 2: 0.8 * 3 ln 4 + 0.1 (-ln 0.75 + 3 ln 4)
    weighted = (1.2 * LN2 + 5.4 * LN2 - 0.1 * math.log(0.75)) / 4
    weights = torch.tensor([1.0, 3.0])
    assert loss_value("ce", TWO_PIXELS, TWO_TARGETS, smoothing=0.2, class_weights=weights) == pytest.approx(
        weighted, rel=1e-6)


@pytest.mark.parametrize("smoothing", [-0.1, 1.0])
def test_label_smoothing_out_of_range_is_refused(smoothing):
    with pytest.raises(ValueError, match="smoothing must be in"):
        build_loss("ce", smoothing=smoothing)
    with pytest.raises(UserError, match="smoothing must be in"):
        build_loss_options("ce", {"smoothing": smoothing})  # what the command line checks before it starts


def test_focal_by_hand():
    # gamma 2: (0.5^2 ln 2 + 0.75^2 ln 4) / 2; gamma 0 is cross-entropy
    assert loss_value("focal", TWO_PIXELS, TWO_TARGETS) == pytest.approx((0.25 + 1.125) / 2 * LN2, rel=1e-6)
    assert loss_value("focal", TWO_PIXELS, TWO_TARGETS, focal_gamma=0.0) == pytest.approx(1.5 * LN2, rel=1e-6)


def test_ohem_keeps_the_hard_pixels_and_at_least_min_kept():
    # p(true) = 0.9, 0.5, 0.25, 0.8 and a void pixel
    logits = logits_for([[0.1, 0.9], [0.5, 0.5], [0.75, 0.25], [0.8, 0.2], [0.5, 0.5]])
    target = torch.tensor([[[1, 0, 1, 0, VOID]]])
    # below 0.7: the pixels at 0.5 and 0.25
    hard = (math.log(2) + math.log(4)) / 2
    assert loss_value("ohem", logits, target, ohem_min_kept=2) == pytest.approx(hard, rel=1e-6)
    # at least 3: the three hardest (0.25, 0.5, 0.8)
    three = (math.log(2) + math.log(4) - math.log(0.8)) / 3
    assert loss_value("ohem", logits, target, ohem_min_kept=3) == pytest.approx(three, rel=1e-6)
    # more than there are labelled pixels: all four
    every = (math.log(2) + math.log(4) - math.log(0.8) - math.log(0.9)) / 4
    assert loss_value("ohem", logits, target, ohem_min_kept=100_000) == pytest.approx(every, rel=1e-6)
    # a lower threshold with none below it: the min_kept hardest
    assert loss_value("ohem", logits, target, ohem_thresh=0.1, ohem_min_kept=1) == pytest.approx(math.log(4), rel=1e-6)


def test_kth_smallest_is_exact():
    values = torch.rand(5000, generator=torch.Generator().manual_seed(0))
    values[:7] = 0.0
    values[7:9] = 1.0
    for k in (1, 7, 8, 2500, 4999, 5000):
        assert kth_smallest(values, k) == torch.kthvalue(values, k).values.item(), k


def test_dice_by_hand():
    # pixels p = (0.5, 0.5, 0) [class 0], (0.25, 0.75, 0) [class 1], a void pixel; class 2 absent:
    # class 0: 2 * 0.5 / (0.75 + 1) = 4/7, class 1: 2 * 0.75 / (1.25 + 1) = 2/3 -> 1 - mean = 8/21
    logits = logits_for([[0.5, 0.5, 0.0], [0.25, 0.75, 0.0], [0.0, 0.0, 1.0]])
    target = torch.tensor([[[0, 1, VOID]]])
    assert loss_value("dice", logits, target) == pytest.approx(8 / 21, rel=1e-6)


def test_lovasz_softmax_by_hand():
    # p(class 1) = 0.9, 0.6, 0.2 with labels 1, 0, 1:
    # class 1: errors 0.8, 0.6, 0.1 (sorted), gradient 1/2, 1/6, 1/3 -> 0.5333
    # class 0: errors 0.8, 0.6, 0.1, gradient 1/2, 1/2, 0 -> 0.7; mean 37/60
    logits = logits_for([[0.1, 0.9], [0.4, 0.6], [0.8, 0.2], [0.3, 0.7]])
    target = torch.tensor([[[1, 0, 1, VOID]]])
    assert loss_value("lovasz", logits, target) == pytest.approx(37 / 60, rel=1e-6)
    # the Lovász extension equals the Jaccard loss on hard predictions: class 0 predicted on
    # pixels 0 and 1 (truth: 1 only) -> 1 - 1/2; class 1 on pixel 2 (truth: 0, 2) -> 1 - 1/2
    hard = logits_for([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    assert loss_value("lovasz", hard, torch.tensor([[[1, 0, 1]]])) == pytest.approx(0.5, abs=1e-6)


def test_lovasz_per_image_averages_images():
    torch.manual_seed(0)
    logits, target = torch.randn(2, 3, 4, 5), torch.randint(0, 3, (2, 4, 5))
    target[1, 0] = VOID
    per_image = loss_value("lovasz", logits, target, lovasz_per_image=True)
    each = [loss_value("lovasz", logits[i: i + 1], target[i: i + 1]) for i in range(2)]
    assert per_image == pytest.approx(sum(each) / 2, rel=1e-6)
    assert loss_value("lovasz", logits, target) != pytest.approx(per_image, rel=1e-3)


@pytest.mark.parametrize("name", ["ce", "focal", "ohem", "dice", "lovasz"])
def test_losses_train_and_ignore_void(name):
    """Gradients reach the labelled pixels only; an all-void batch gives zero, not NaN."""
    torch.manual_seed(0)
    logits = torch.randn(2, 4, 6, 6, requires_grad=True)
    target = torch.randint(0, 4, (2, 6, 6))
    target[:, :3] = VOID
    loss = build_loss(name, ohem_min_kept=5)(logits, target, totals_of(target))
    loss.backward()
    assert torch.isfinite(loss) and loss > 0
    assert logits.grad[:, :, :3].abs().max() == 0 and logits.grad[:, :, 3:].abs().max() > 0
    void = torch.full_like(target, VOID)
    empty = build_loss(name)(logits, void, totals_of(void))
    assert float(empty.detach()) == 0.0


def test_cross_entropy_share_over_micro_batches_adds_up():
    """Micro-batches normalised by the whole batch's pixel count add up to the batch's loss."""
    torch.manual_seed(1)
    logits, target = torch.randn(4, 3, 5, 5), torch.randint(0, 3, (4, 5, 5))
    target[0, :2] = VOID
    weights = torch.tensor([0.5, 1.0, 2.0])
    whole = F.cross_entropy(logits, target, weight=weights, ignore_index=VOID)
    totals = BatchTotals(float(labelled_weight(target, weights)), images=4, micro_batches=2)
    loss = build_loss("ce", class_weights=weights)
    parts = [loss(logits[i: i + 2], target[i: i + 2], totals) for i in (0, 2)]
    assert float(sum(parts)) == pytest.approx(float(whole), rel=1e-6)


def test_total_loss_weights_auxiliary_outputs():
    torch.manual_seed(2)
    outputs = {"out": torch.randn(1, 3, 4, 4), "aux": torch.randn(1, 3, 4, 4), "unused": torch.randn(1, 3, 4, 4)}
    target = torch.randint(0, 3, (1, 4, 4))
    total, parts = total_loss(build_loss("ce"), outputs, target, {"aux": 0.4}, totals_of(target))
    expected = F.cross_entropy(outputs["out"], target) + 0.4 * F.cross_entropy(outputs["aux"], target)
    assert float(total) == pytest.approx(float(expected), rel=1e-6)
    assert set(parts) == {"out", "aux"}


def test_build_loss_refuses_what_does_not_fit():
    with pytest.raises(ValueError, match="unknown loss"):
        build_loss("hinge")
    with pytest.raises(ValueError, match="class weights"):
        build_loss("dice", class_weights=torch.ones(3))


def test_unet_weight_map_by_hand():
    """Ronneberger et al., Eq. 2: two cells (class 1) three columns apart; a gap pixel one and
    two pixels from them weighs 1 + 10 exp(-(1 + 2)^2 / (2 * 5^2)); cell pixels weigh 1; a
    background pixel near one cell only is weighted by its distance to both."""
    from atrous.losses.unet_weight_map import border_weights

    labels = np.zeros((4, 12), np.int64)
    labels[:, 0:5] = 1  # cell A: columns 0-4
    labels[:, 7:10] = 1  # cell B: columns 7-9; gap: columns 5, 6; background: 10, 11
    weights = border_weights(labels)
    gap = 10 * np.exp(-(1 + 2) ** 2 / 50)
    np.testing.assert_allclose(weights[:, 5], gap, rtol=1e-6)
    np.testing.assert_allclose(weights[:, 6], gap, rtol=1e-6)
    np.testing.assert_allclose(weights[:, 11], 10 * np.exp(-(2 + 7) ** 2 / 50), rtol=1e-6)
    assert not weights[labels == 1].any()
    assert not border_weights(np.zeros((4, 4), np.int64)).any()  # fewer than two objects
    target = torch.from_numpy(labels)[None].clone()
    target[0, 0, 11] = 255  # void
    logits = torch.randn(1, 2, 4, 12)
    loss = build_loss("unet_weight_map")
    total = BatchTotals(pixel_weight=float((target != 255).sum()), images=1)
    ce = torch.nn.functional.cross_entropy(logits, target.clamp(max=1), reduction="none")[0]
    w = 1 + torch.from_numpy(weights)
    w[0, 11] = 0
    expected = (w * ce).sum() / total.pixel_weight
    torch.testing.assert_close(loss(logits, target, total), expected)


def test_unet_weight_map_is_computed_once_per_target(monkeypatch):
    """Auxiliary outputs are scored against the same target: the distance transforms run once."""
    import atrous.losses.unet_weight_map as module

    calls = []
    real = module.border_weights
    monkeypatch.setattr(module, "border_weights", lambda *a, **k: calls.append(1) or real(*a, **k))
    loss = build_loss("unet_weight_map")
    target = torch.zeros(2, 8, 8, dtype=torch.long)
    total = BatchTotals(pixel_weight=128.0, images=2)
    outputs = {"out": torch.randn(2, 2, 8, 8), "aux": torch.randn(2, 2, 8, 8)}
    total_loss(loss, outputs, target, {"aux": 0.4}, total)
    assert len(calls) == 2  # one per image, once
    loss(torch.randn(2, 2, 8, 8), target.clone(), total)
    assert len(calls) == 4  # a new target is computed again
