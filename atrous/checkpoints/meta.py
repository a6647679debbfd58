"""What a checkpoint says besides its weights: class names, palette, normalisation."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from atrous.data import IMAGENET_MEAN, IMAGENET_STD, DatasetInfo, normalise
from atrous.data.tasks import DEFAULT_THRESHOLD


def model_meta(info: DatasetInfo, mean: Sequence[float], std: Sequence[float], *,
               threshold: float | None = None) -> dict[str, Any]:
    """What a trained model's checkpoint says: its dataset, classes (labels for the binary and
    multilabel tasks), colours, void, normalisation, task and, for the sigmoid tasks, the
    threshold predictions use by default."""
    meta = {
        "dataset": info.name,
        "class_names": list(info.class_names),
        "palette": [list(c) for c in info.palette],
        "ignore_index": info.ignore_index,
        "mean": list(mean),
        "std": list(std),
        "task": info.task,
    }
    if info.task != "multiclass":
        meta["threshold"] = DEFAULT_THRESHOLD if threshold is None else float(threshold)
    return meta


def normalisation(meta: dict[str, Any]) -> tuple[list[float], list[float]]:
    return list(meta.get("mean", IMAGENET_MEAN)), list(meta.get("std", IMAGENET_STD))


def normalise_for(model: torch.nn.Module, images: torch.Tensor) -> torch.Tensor:
    """Raw images (N, C, H, W) or (C, H, W), as atrous.data.read_image gives them, normalised
    as `model` was trained (its checkpoint's per-band mean and std; 8-bit images scaled to 0-1
    first): what `model(x)` and `atrous.infer` take."""
    mean, std = normalisation(getattr(model, "meta", None) or {})
    return normalise(images, torch.tensor(mean, dtype=torch.float32), torch.tensor(std, dtype=torch.float32))


def palette_of(meta: dict[str, Any], num_classes: int) -> np.ndarray:
    """(256, 3) uint8 colour table: the checkpoint's palette, black elsewhere."""
    from atrous.data import default_palette

    colours = meta.get("palette") or default_palette(num_classes)
    table = np.zeros((256, 3), np.uint8)
    table[: len(colours)] = np.asarray(colours, np.uint8)
    return table

