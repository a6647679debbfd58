"""Evaluation: confusion-matrix metrics over a dataset, optionally after CRF refinement,
optionally inside DeepLab's trimap band; and the per-class table.

In a distributed run (torchrun) each rank scores its shard - every W-th block of
`batch_size` consecutive images, batched exactly as one process batches them - and the
confusion matrices are summed over the ranks: the metrics equal one process's exactly."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch

from atrous.checkpoints.meta import normalisation
from atrous.data import eval_transform
from atrous.data.display import crf_images
from atrous.data.tasks import is_sigmoid, label_planes, predicted, task_of, threshold_of
from atrous.inference.infer import Views, infer, infer_views, prepare
from atrous.metrics import ConfusionMatrix, LabelMetrics, trimap_mask
from atrous.models import SegmentationModel
from atrous.runtime.distributed import World, all_reduce_sum, current_world
from atrous.runtime.progress import progress_bar


def batches_of_equal_size(
    dataset: torch.utils.data.Dataset, batch_size: int, transform
) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """Consecutive items stacked into batches: items are taken in blocks of `batch_size`
    (0..B-1, B..2B-1, ...), and a block is cut where the image size changes. Yields
    (normalised images, masks, raw uint8 images). A shard made of whole blocks is batched as
    the same items are in the whole dataset (distributed evaluation relies on it)."""
    images, masks, raws = [], [], []
    for index in range(len(dataset)):
        raw, mask = dataset[index]
        image, mask = transform(raw, mask, None)
        if images and (image.shape != images[0].shape or index % batch_size == 0):
            yield torch.stack(images), torch.stack(masks), torch.stack(raws)
            images, masks, raws = [], [], []
        images.append(image)
        masks.append(mask)
        raws.append(raw)
    if images:
        yield torch.stack(images), torch.stack(masks), torch.stack(raws)


class FirstItems(torch.utils.data.Dataset):
    """The first `count` items of a dataset, keeping its `info`."""

    def __init__(self, dataset: torch.utils.data.Dataset, count: int) -> None:
        self.dataset, self.count, self.info = dataset, min(count, len(dataset)), dataset.info

    def __len__(self) -> int:
        return self.count

    def __getitem__(self, index: int):
        if index >= self.count:
            raise IndexError(index)
        return self.dataset[index]


def predict_logits(model: SegmentationModel, images: torch.Tensor, precision: str = "fp32") -> torch.Tensor:
    """(N, 3, H, W) normalised images -> (N, K, H, W) float32 logits on the model's device:
    `atrous.infer` with one view (kept for its callers)."""
    return infer(model, images, precision=precision)


def evaluate(
    model: SegmentationModel,
    dataset: torch.utils.data.Dataset,
    *,
    batch_size: int = 4,
    precision: str = "auto",
    views: Views | None = None,
    crf: torch.nn.Module | None = None,
    trimap_widths: Sequence[int] = (),
    progress: bool = True,
    confusion_matrix: bool = False,
    on_batch: Callable[[list[int], torch.Tensor, torch.Tensor, torch.Tensor], None] | None = None,
    threshold: float | None = None,
) -> dict[str, Any]:
    """Metrics of `model` on `dataset` (full images, no crop), through `atrous.infer` with
    `views` (scales, flip, sliding window) at `precision`. With `crf`, the scores are refined
    first (it receives the raw 0..255 images). `trimap_widths` adds mIoU within w pixels of
    label boundaries under "trimap". For pictures (atrous.inference.plots), both off by
    default: `confusion_matrix` adds the summed counts under "confusion_matrix" (rows ground
    truth, columns prediction), and `on_batch(indices, raws, masks, pred)` is called on each
    batch of this process with the dataset indices, raw images, masks and (N, H, W) labels.

    Binary and multilabel models (model.meta["task"]) are scored per label (metrics.LabelMetrics)
    on sigmoid(scores) > `threshold` (default: the model's, else 0.5); the trimap and `on_batch`
    are for multiclass models."""
    mean, std = normalisation(model.meta)
    info = getattr(dataset, "info", None)
    num_classes = model.num_classes
    ignore = info.ignore_index if info else 255
    task, threshold = task_of(model.meta), threshold_of(model.meta, threshold)
    if is_sigmoid(task) and (trimap_widths or on_batch is not None):
        raise ValueError(f"the trimap and per-image pictures are for multiclass models, not {task} ones")
    matrix = LabelMetrics(num_classes, ignore) if is_sigmoid(task) else ConfusionMatrix(num_classes, ignore)
    bands = {w: ConfusionMatrix(num_classes, ignore) for w in trimap_widths}
    net, views = prepare(model, precision), views or Views()
    world = current_world()
    shard = torch.utils.data.Subset(dataset, shard_indices(len(dataset), batch_size, world))
    bar = progress_bar(len(shard), desc="eval", unit="img", disable=not (progress and world.is_main))
    seen = 0
    for images, masks, raws in batches_of_equal_size(shard, batch_size, eval_transform(mean, std)):
        logits = infer_views(net, images, views)
        if crf is not None:
            logits = crf(logits, crf_images(raws).to(logits.device))
        pred = predicted(logits, task, threshold).cpu()
        matrix.update(pred, label_planes(masks, task) if is_sigmoid(task) else masks)
        if on_batch is not None:
            on_batch(shard.indices[seen:seen + len(images)], raws, masks, pred)
        seen += len(images)
        for width, band_matrix in bands.items():
            band = trimap_mask(masks, width, ignore)
            band_matrix.update(pred[band], masks[band])
        bar.update(len(images))
    bar.close()
    for counts in (matrix, *bands.values()):
        all_reduce_sum(counts.matrix)
    result = matrix.compute()
    result["class_names"] = list(model.meta.get("class_names") or (info.class_names if info else []))
    result["images"] = len(dataset)
    result["task"] = task
    if is_sigmoid(task):
        result["threshold"] = threshold
    if bands:
        result["trimap"] = {str(w): m.compute()["mIoU"] for w, m in bands.items()}
    if confusion_matrix:
        result["confusion_matrix"] = matrix.matrix.tolist()
    return result


def shard_indices(length: int, batch_size: int, world: World) -> list[int]:
    """This rank's items: blocks of `batch_size` consecutive items, every `world.size`-th."""
    return [i for i in range(length) if (i // batch_size) % world.size == world.rank]


def format_table(metrics: dict[str, Any]) -> str:
    """Per-class IoU and accuracy, then the summary metrics, as percentages (binary and
    multilabel: per label IoU, Dice, precision and recall)."""
    if "per_label_dice" in metrics:
        return _label_table(metrics)
    names = metrics.get("class_names") or [f"class_{i}" for i in range(len(metrics["per_class_iou"]))]
    width = max(12, *(len(n) for n in names))
    lines = [f"{'class':<{width}}  {'IoU':>6}  {'acc':>6}", "-" * (width + 16)]
    for name, iou, acc in zip(names, metrics["per_class_iou"], metrics["per_class_accuracy"], strict=True):
        lines.append(f"{name:<{width}}  {_pct(iou)}  {_pct(acc)}")
    lines.append("-" * (width + 16))
    for key, label in (("mIoU", "mIoU"), ("mean_accuracy", "mean acc"), ("pixel_accuracy", "pixel acc"),
                       ("fw_iou", "fw IoU")):
        lines.append(f"{label:<{width}}  {_pct(metrics[key])}")
    for width_px, value in metrics.get("trimap", {}).items():
        lines.append(f"{'trimap ' + width_px + 'px mIoU':<{width}}  {_pct(value)}")
    return "\n".join(lines)


def _label_table(metrics: dict[str, Any]) -> str:
    """The binary and multilabel table: a row per label, then the means, as percentages."""
    names = metrics.get("class_names") or [f"label_{i}" for i in range(len(metrics["per_class_iou"]))]
    width = max(12, *(len(n) for n in names))
    columns = ("per_class_iou", "per_label_dice", "per_label_precision", "per_label_recall")
    rule = "-" * (width + 34)
    lines = [f"{'label':<{width}}  {'IoU':>6}  {'Dice':>6}  {'prec':>6}  {'recall':>6}", rule]
    for index, name in enumerate(names):
        lines.append(f"{name:<{width}}  " + "  ".join(_pct(metrics[key][index]) for key in columns))
    lines.append(rule)
    lines.append(f"{'mean':<{width}}  " + "  ".join(
        _pct(metrics[key]) for key in ("mIoU", "mean_dice", "mean_precision", "mean_recall")))
    lines.append(f"{'pixel acc':<{width}}  {_pct(metrics['pixel_accuracy'])}")
    if "threshold" in metrics:
        lines.append(f"(threshold {metrics['threshold']:g})")
    return "\n".join(lines)


def _pct(value: float | None) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return f"{'-':>6}"
    return f"{100 * value:6.2f}"
