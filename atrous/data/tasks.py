"""The three tasks (`--task`): what each means for masks, model outputs and predictions.

- multiclass (the default, today's): one class per pixel. Masks (H, W) int64 class indices;
  the model gives K logits, their softmax the class probabilities; the prediction is the argmax.
- binary: foreground or background. Masks (H, W) int64 of 0 and 1; the model gives ONE logit,
  its sigmoid the foreground probability; the prediction is probability > threshold.
- multilabel: K labels, each on or off at every pixel, any number at once (they overlap).
  Masks (K, H, W) int64 of 0 and 1 per label; K logits, each its own sigmoid; K predictions.

Void is 255 in every task and every mask (a multilabel mask may mark one label void at a pixel
and not the others); it is ignored by the losses and the metrics. How mask files become these
masks (0/255 binary PNGs, K-band TIFFs, one PNG per label) is atrous.data.masks'.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch

from atrous.data.io import DataError
from atrous.data.meta import DatasetInfo

TASKS = ("multiclass", "binary", "multilabel")
DEFAULT_TASK = "multiclass"
DEFAULT_THRESHOLD = 0.5


def is_sigmoid(task: str) -> bool:
    """True for binary and multilabel: every output is its own sigmoid."""
    return task in ("binary", "multilabel")


def task_of(meta: dict[str, Any] | None) -> str:
    """The task a checkpoint's metadata names; multiclass for checkpoints from before tasks."""
    return (meta or {}).get("task") or DEFAULT_TASK


def threshold_of(meta: dict[str, Any] | None, threshold: float | None = None) -> float:
    """`threshold` when given, else the one the model was trained with, else 0.5."""
    if threshold is not None:
        return float(threshold)
    return float((meta or {}).get("threshold") or DEFAULT_THRESHOLD)


def probabilities(scores: torch.Tensor, task: str) -> torch.Tensor:
    """(..., K, H, W) scores -> probabilities: softmax over K (multiclass) or each sigmoid."""
    return torch.sigmoid(scores) if is_sigmoid(task) else torch.softmax(scores, dim=-3)


def scores_of_mean(mean: torch.Tensor, task: str) -> torch.Tensor:
    """Probabilities averaged over views -> scores that give them back through `probabilities`:
    log(p) for the softmax (log p - log p_max is the same softmax), logit(p) for sigmoids."""
    tiny = torch.finfo(mean.dtype).tiny
    if is_sigmoid(task):
        return torch.log(mean.clamp_min(tiny)) - torch.log((1 - mean).clamp_min(tiny))
    return torch.log(mean.clamp_min(tiny))


def predicted(scores: torch.Tensor, task: str, threshold: float = DEFAULT_THRESHOLD) -> torch.Tensor:
    """(N, K, H, W) scores -> int64 predictions: (N, H, W) classes (multiclass), or (N, K, H, W)
    0/1 per label where sigmoid(score) > threshold (binary: K = 1)."""
    if is_sigmoid(task):
        return (torch.sigmoid(scores.float()) > threshold).long()
    return scores.argmax(dim=-3)


def label_planes(target: torch.Tensor, task: str) -> torch.Tensor:
    """A batch of masks as (N, K, H, W) planes of 0/1/void: binary (N, H, W) -> (N, 1, H, W)."""
    if task == "binary":
        return target[:, None] if target.ndim == 3 else target
    if task == "multilabel":
        return target
    raise ValueError(f"label planes are for the binary and multilabel tasks, not {task}")


def check_task(task: str, where: str = "task") -> str:
    if task not in TASKS:
        raise ValueError(f"{where} must be one of {', '.join(TASKS)}, got {task!r}")
    return task


def binary_info(info: DatasetInfo) -> DatasetInfo:
    """A two-class dataset (background, foreground) as a binary one: the foreground's name and
    colour (class 1's). DataError for any other class count."""
    if info.num_classes == 1:
        return dataclasses.replace(info, task="binary")
    if info.num_classes != 2:
        raise DataError(f"dataset {info.name} has {info.num_classes} classes; task binary needs two "
                        "(background 0, foreground 1)", argument="task")
    return dataclasses.replace(info, class_names=info.class_names[1:], palette=info.palette[1:], task="binary")


class BinaryView(torch.utils.data.Dataset):
    """A two-class dataset read for the binary task: its masks (0, 1 and void 255) unchanged,
    its info the foreground's (`binary_info`)."""

    def __init__(self, dataset: torch.utils.data.Dataset) -> None:
        self.dataset = dataset
        self.info = binary_info(dataset.info)

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.dataset[index]

    def labels(self) -> Iterator[np.ndarray]:
        return self.dataset.labels()


def for_task(dataset: torch.utils.data.Dataset, task: str, name: str) -> torch.utils.data.Dataset:
    """`dataset` as the task asks: a dataset that read its masks for the task itself as it is,
    a two-class multiclass dataset as a binary one; DataError where the task cannot apply."""
    have = getattr(dataset.info, "task", DEFAULT_TASK)
    if have == task:
        return dataset
    if task == "binary" and have == DEFAULT_TASK:
        return BinaryView(dataset)
    raise DataError(f"dataset {name} has no {task} masks (it is {have}); the folder and synthetic datasets "
                    "read every task")
