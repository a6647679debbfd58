"""What a checkpoint says besides its weights: class names, palette, normalisation."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from atrous.data import IMAGENET_MEAN, IMAGENET_STD, DatasetInfo


def model_meta(info: DatasetInfo, mean: Sequence[float], std: Sequence[float]) -> dict[str, Any]:
    return {
        "dataset": info.name,
        "class_names": list(info.class_names),
        "palette": [list(c) for c in info.palette],
        "ignore_index": info.ignore_index,
        "mean": list(mean),
        "std": list(std),
    }


def normalisation(meta: dict[str, Any]) -> tuple[list[float], list[float]]:
    return list(meta.get("mean", IMAGENET_MEAN)), list(meta.get("std", IMAGENET_STD))


def palette_of(meta: dict[str, Any], num_classes: int) -> np.ndarray:
    """(256, 3) uint8 colour table: the checkpoint's palette, black elsewhere."""
    from atrous.data import default_palette

    colours = meta.get("palette") or default_palette(num_classes)
    table = np.zeros((256, 3), np.uint8)
    table[: len(colours)] = np.asarray(colours, np.uint8)
    return table

