"""Confusion-matrix metrics: hand-computed cases and agreement with torchmetrics."""

import math

import pytest
import torch

from atrous.metrics import ConfusionMatrix, trimap_mask


def test_hand_computed_case():
    # truth:  0 0 1 1 2 255      pred: 0 1 1 1 0 2
    target = torch.tensor([0, 0, 1, 1, 2, 255])
    pred = torch.tensor([0, 1, 1, 1, 0, 2])
    cm = ConfusionMatrix(3)
    cm.update(pred, target)
    assert cm.matrix.tolist() == [[1, 1, 0], [0, 2, 0], [1, 0, 0]]
    m = cm.compute()
    # IoU: class 0 = 1 / (2 + 2 - 1) = 1/3, class 1 = 2 / (2 + 3 - 2) = 2/3, class 2 = 0 / (1 + 0) = 0
    assert m["per_class_iou"] == pytest.approx([1 / 3, 2 / 3, 0.0])
    assert m["mIoU"] == pytest.approx((1 / 3 + 2 / 3 + 0) / 3)
    assert m["pixel_accuracy"] == pytest.approx(3 / 5)
    assert m["mean_accuracy"] == pytest.approx((1 / 2 + 1 + 0) / 3)
    assert m["fw_iou"] == pytest.approx(2 / 5 * 1 / 3 + 2 / 5 * 2 / 3 + 1 / 5 * 0)
    assert m["pixels"] == 5


def test_absent_class_is_left_out_of_the_mean():
    cm = ConfusionMatrix(4)
    cm.update(torch.tensor([0, 1, 1]), torch.tensor([0, 1, 1]))
    m = cm.compute()
    assert m["per_class_iou"][2] is None and m["per_class_iou"][3] is None
    assert m["mIoU"] == 1.0
    assert m["mean_accuracy"] == 1.0


def test_accumulates_over_batches():
    torch.manual_seed(0)
    pred, target = torch.randint(0, 5, (4, 16, 16)), torch.randint(0, 5, (4, 16, 16))
    whole, parts = ConfusionMatrix(5), ConfusionMatrix(5)
    whole.update(pred, target)
    for p, t in zip(pred, target, strict=True):
        parts.update(p, t)
    assert torch.equal(whole.matrix, parts.matrix)


def test_rejects_bad_labels_and_shapes():
    cm = ConfusionMatrix(3)
    with pytest.raises(ValueError, match="target labels"):
        cm.update(torch.tensor([0]), torch.tensor([3]))
    with pytest.raises(ValueError, match="shape"):
        cm.update(torch.zeros(2, 2, dtype=torch.long), torch.zeros(4, dtype=torch.long))


def test_agrees_with_torchmetrics():
    tm = pytest.importorskip("torchmetrics.classification", reason="torchmetrics (the test extra) is not "
                             "installed: the metrics are not compared with it")
    torch.manual_seed(1)
    k = 6
    target = torch.randint(0, k, (3, 40, 50))
    target[:, :5] = 255
    pred = torch.where(torch.rand(3, 40, 50) < 0.6, target.clamp(max=k - 1), torch.randint(0, k, (3, 40, 50)))
    cm = ConfusionMatrix(k)
    cm.update(pred, target)
    m = cm.compute()
    iou = tm.MulticlassJaccardIndex(k, average="none", ignore_index=255)(pred, target)
    acc = tm.MulticlassAccuracy(k, average="none", ignore_index=255)(pred, target)
    micro = tm.MulticlassAccuracy(k, average="micro", ignore_index=255)(pred, target)
    assert m["per_class_iou"] == pytest.approx(iou.tolist(), abs=1e-6)
    assert m["mIoU"] == pytest.approx(float(iou.mean()), abs=1e-6)
    assert m["per_class_accuracy"] == pytest.approx(acc.tolist(), abs=1e-6)
    assert m["pixel_accuracy"] == pytest.approx(float(micro), abs=1e-6)
    assert not math.isnan(m["fw_iou"])


def test_trimap_band_is_around_boundaries():
    target = torch.zeros(1, 9, 9, dtype=torch.long)
    target[:, :, 5:] = 1  # vertical boundary between columns 4 and 5
    band = trimap_mask(target, 1)[0]
    assert band[:, 4:6].all()
    assert not band[:, :4].any() and not band[:, 6:].any()
    band2 = trimap_mask(target, 2)[0]
    assert band2[:, 3:7].all() and not band2[:, :3].any()
