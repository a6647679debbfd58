"""A picture of training samples as the model is fed them: each augmented image (through its
display bands) beside the same image with its mask's colours over it (`atrous data show`).
Void pixels are left uncoloured; a multi-label mask shows each label's colour where it is set,
mixed where labels overlap."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from PIL import Image

from atrous.data.display import display_rgb
from atrous.data.meta import IGNORE_INDEX

GAP = 4  # pixels of white between tiles


def coloured(mask: torch.Tensor, palette: Sequence[Sequence[int]]) -> tuple[np.ndarray, np.ndarray]:
    """(H, W) class indices or (K, H, W) 0/1 labels -> ((H, W, 3) colours, (H, W) bool: coloured)."""
    colours = np.asarray(palette, np.float32).reshape(-1, 3)
    labels = mask.cpu().numpy()
    if labels.ndim == 3:  # multi-label: the mean colour of the labels set at each pixel
        on = (labels == 1).astype(np.float32)  # (K, H, W)
        count = on.sum(axis=0)
        mixed = np.einsum("khw,kc->hwc", on, colours[: len(on)]) / np.maximum(count, 1)[..., None]
        return mixed, count > 0
    known = (labels != IGNORE_INDEX) & (labels < len(colours))
    return colours[np.where(known, labels, 0)], known


def sample_tile(image: torch.Tensor, mask: torch.Tensor, palette: Sequence[Sequence[int]],
                display_bands: Sequence[int] | None = None, alpha: float = 0.5) -> np.ndarray:
    """(H, 2W + GAP, 3) uint8: the image, and the image under its mask's colours."""
    labelled = (mask != IGNORE_INDEX).cpu().numpy()
    labelled = labelled.any(axis=0) if labelled.ndim == 3 else labelled  # not a crop's padding
    shown = display_rgb(image, display_bands, where=labelled).astype(np.float32)
    colours, where = coloured(mask, palette)
    blended = np.where(where[..., None], shown * (1 - alpha) + colours * alpha, shown)
    gap = np.full((shown.shape[0], GAP, 3), 255, np.float32)
    return np.concatenate([shown, gap, blended], axis=1).round().astype(np.uint8)


def sample_grid(tiles: Sequence[np.ndarray], columns: int = 2) -> Image.Image:
    """Tiles (of any sizes) in rows of `columns`, on white."""
    rows = [tiles[i : i + columns] for i in range(0, len(tiles), columns)]
    height = sum(max(t.shape[0] for t in row) for row in rows) + GAP * (len(rows) - 1)
    width = max(sum(t.shape[1] for t in row) + GAP * (len(row) - 1) for row in rows)
    canvas = np.full((height, width, 3), 255, np.uint8)
    top = 0
    for row in rows:
        left = 0
        for tile in row:
            canvas[top : top + tile.shape[0], left : left + tile.shape[1]] = tile
            left += tile.shape[1] + GAP
        top += max(t.shape[0] for t in row) + GAP
    return Image.fromarray(canvas)
