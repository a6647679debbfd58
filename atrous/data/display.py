"""Images of any bands shown to a person: three chosen bands stretched to 8-bit RGB.

An 8-bit photograph is shown as it is (its chosen bands). Any other image (16-bit, float, N bands) is shown
through three of its bands (`bands`, 0-based; default the first three, or its one band as
grey), each stretched linearly between its 2nd and 98th percentile, as GIS viewers do by
default, so that a 12-bit satellite band or a depth map is visible rather than black.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from atrous.data.io import DataError
from atrous.options import option

STRETCH_PERCENTILES = (2.0, 98.0)


def display_rgb(image: torch.Tensor, bands: Sequence[int] | None = None,
                percentiles: tuple[float, float] = STRETCH_PERCENTILES, where: np.ndarray | None = None) -> np.ndarray:
    """(C, H, W) uint8 or float -> (H, W, 3) uint8 for overlays and pictures. `where`: (H, W)
    bool, the pixels the stretch is measured on (e.g. not a crop's padding); default all."""
    chosen = _bands(image.shape[0], bands)
    if image.dtype == torch.uint8:  # a photograph: its own values
        return image[list(chosen)].permute(1, 2, 0).cpu().numpy()
    values = image[list(chosen)].float().cpu().numpy()  # (3, H, W)
    return np.stack([_stretch(band, percentiles, where) for band in values], axis=-1)


def crf_images(raws: torch.Tensor, bands: Sequence[int] | None = None) -> torch.Tensor:
    """(N, C, H, W) raw images -> (N, 3, H, W) float in [0, 255], what the CRFs' colour kernels
    take: 8-bit RGB as it is, anything else through `display_rgb`'s bands and stretch."""
    if raws.dtype == torch.uint8 and raws.shape[1] == 3 and bands is None:
        return raws.float()
    shown = np.stack([display_rgb(raw, bands) for raw in raws])  # (N, H, W, 3)
    return torch.from_numpy(shown).permute(0, 3, 1, 2).float()


def _bands(count: int, bands: Sequence[int] | None) -> tuple[int, int, int]:
    if bands is None:
        return (0, 1, 2) if count >= 3 else (0, 0, 0)
    if len(bands) not in (1, 3):
        raise DataError(f"display_bands takes 3 bands (red, green, blue) or 1 (grey), got {list(bands)}")
    outside = [b for b in bands if not 0 <= b < count]
    if outside:
        raise DataError(f"display_bands {list(bands)}: band {outside[0]} is not among the image's {count} "
                        f"(0 to {count - 1})")
    return tuple(bands) * 3 if len(bands) == 1 else tuple(bands)  # type: ignore[return-value]


def _stretch(band: np.ndarray, percentiles: tuple[float, float], where: np.ndarray | None) -> np.ndarray:
    """(H, W) values -> uint8, low percentile to 0 and high to 255 (a flat band: mid grey)."""
    measured = band[where] if where is not None and where.any() else band
    low, high = np.percentile(measured, percentiles)
    if high <= low:
        return np.full(band.shape, 128, np.uint8)
    return (np.clip((band - low) / (high - low), 0.0, 1.0) * 255.0).round().astype(np.uint8)


def display_bands_option() -> Any:
    """The declaration of `display_bands` (for frozen option classes, which cannot take the mixin)."""
    return option(None, "the bands shown as red, green and blue (or one as grey), 0-based, each stretched between "
                  "its 2nd and 98th percentile; default the first three", nargs="+", metavar="B", ge=0)


@dataclass(kw_only=True)
class DisplayOptions:
    """How images that are not 8-bit RGB are shown (overlays, pictures, the serve page)."""

    display_bands: list[int] | None = display_bands_option()
