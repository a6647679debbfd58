"""Class weights for the cross-entropy loss, computed from the training masks (label files,
read as class indices, or label maps a dataset has already decoded, e.g. `dataset.labels()`).

- `median_frequency`: SegNet's balancing (Eigen & Fergus 2015), weight_c = median(freq) / freq_c,
  where freq_c = pixels of class c / pixels of the images in which c appears.
- `sqrt_median_frequency`: its square root, a milder balance (the rarest CamVid class gets ~3x
  the median instead of ~7x), which keeps the frequent classes' precision.
- `enet`: ENet's scheme (Paszke et al. 2016), weight_c = 1 / ln(1.02 + p_c) with p_c the share
  of all labelled pixels; bounded by 1 / ln(1.02) ~ 50.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import torch

from atrous.data.io import read_mask

CLASS_WEIGHTINGS = ("none", "median_frequency", "sqrt_median_frequency", "enet")
ENET_C = 1.02


Masks = Iterable[str | np.ndarray]  # label file paths or decoded (H, W) label maps


def pixel_counts(masks: Masks, num_classes: int, void: int) -> tuple[np.ndarray, np.ndarray]:
    """(pixels of each class, pixels of the images in which each class appears), float64 (C,)."""
    counts = np.zeros(num_classes, np.float64)
    present_pixels = np.zeros(num_classes, np.float64)
    for item in masks:
        mask = read_mask(item) if isinstance(item, str) else np.asarray(item)
        hist = np.bincount(mask[mask != void].ravel(), minlength=256)[:num_classes]
        counts += hist
        present_pixels[hist > 0] += mask.size
    return counts, present_pixels


def median_frequency_weights(masks: Masks, num_classes: int, void: int = 255) -> torch.Tensor:
    counts, present_pixels = pixel_counts(masks, num_classes, void)
    freq = np.divide(counts, present_pixels, out=np.zeros_like(counts), where=present_pixels > 0)
    weights = np.divide(np.median(freq[freq > 0]), freq, out=np.zeros_like(freq), where=freq > 0)
    return torch.tensor(weights, dtype=torch.float32)


def enet_weights(masks: Masks, num_classes: int, void: int = 255, c: float = ENET_C) -> torch.Tensor:
    counts, _ = pixel_counts(masks, num_classes, void)
    share = counts / max(counts.sum(), 1.0)
    return torch.tensor(1.0 / np.log(c + share), dtype=torch.float32)


def class_weights(scheme: str, masks: Masks, num_classes: int, void: int = 255) -> torch.Tensor | None:
    """The weights of `scheme` (one of CLASS_WEIGHTINGS; None for 'none'), shape (num_classes,)."""
    if scheme == "none":
        return None
    if scheme == "median_frequency":
        return median_frequency_weights(masks, num_classes, void)
    if scheme == "sqrt_median_frequency":
        return median_frequency_weights(masks, num_classes, void).sqrt()
    if scheme == "enet":
        return enet_weights(masks, num_classes, void)
    raise ValueError(f"unknown class weighting '{scheme}'; choose one of {CLASS_WEIGHTINGS}")
