"""U-Net's weighted cross-entropy (`--loss unet_weight_map`): Ronneberger et al. 2015, Eq. 2.

    w(x) = w_c(x) + w0 * exp(-(d1(x) + d2(x))^2 / (2 sigma^2))

w_c is the class-balancing weight (`--class-weights`, 1 without), d1 and d2 the distances to the
nearest and second-nearest object, the objects being the connected regions of `object_class`
in the label map (ISBI 2012: the cells, class 1); w0 = 10 and sigma = 5 pixels as in the paper.
The border term weighs the background pixels (those that are not of `object_class`), the thin
gaps that separate touching cells in the paper's Fig. 3d; computed on each label map as it
reaches the loss (after cropping and deformation). The sum of w(x) times the pixel's
cross-entropy is divided by the batch's sum of w_c, as `ce`, so that it is exact over ranks."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from atrous.errors import UserError
from atrous.losses.base import BatchTotals, SegmentationLoss, divide, labels_of
from atrous.losses.registry import register_loss


def border_weights(labels: np.ndarray, object_class: int = 1, w0: float = 10.0, sigma: float = 5.0) -> np.ndarray:
    """(H, W) labels -> (H, W) float32: w0 exp(-(d1 + d2)^2 / 2 sigma^2) on the pixels that are
    not `object_class`, 0 on its pixels and wherever fewer than two objects exist."""
    try:
        from scipy import ndimage
    except ImportError as err:
        raise UserError("loss unet_weight_map needs scipy: pip install scipy", argument="loss") from err
    objects, count = ndimage.label(labels == object_class)
    weights = np.zeros(labels.shape, np.float32)
    if count < 2:
        return weights
    nearest = np.full(labels.shape, np.inf)
    second = np.full(labels.shape, np.inf)
    for index in range(1, count + 1):  # distances to each object, keeping the two smallest
        distance = ndimage.distance_transform_edt(objects != index)
        second = np.minimum(second, np.maximum(nearest, distance))
        nearest = np.minimum(nearest, distance)
    background = labels != object_class
    weights[background] = w0 * np.exp(-((nearest + second)[background] ** 2) / (2 * sigma**2))
    return weights


@register_loss("unet_weight_map", weighted=True)
class UNetWeightMap(SegmentationLoss):
    """Cross-entropy with U-Net's per-pixel weight map (Eq. 2): class weights plus a border term
    that makes the gaps between touching objects count."""

    def __init__(self, *, w0: float = 10.0, sigma: float = 5.0, object_class: int = 1, **base) -> None:
        super().__init__(**base)
        if w0 < 0 or sigma <= 0:
            raise ValueError(f"unet_weight_map needs w0 >= 0 and sigma > 0, got {w0}, {sigma}")
        self.w0, self.sigma, self.object_class = w0, sigma, object_class
        self._last: tuple[torch.Tensor, torch.Tensor] | None = None  # (target, its weights)

    def pixel_weights(self, target: torch.Tensor) -> torch.Tensor:
        """(n, H, W) -> (n, H, W): w(x) of Eq. 2, 0 on void. Computed once per target: a
        model's auxiliary outputs are scored against the same target tensor."""
        if self._last is not None and self._last[0] is target:
            return self._last[1]
        valid, safe = labels_of(target, self.ignore_index)
        borders = [border_weights(t.cpu().numpy(), self.object_class, self.w0, self.sigma) for t in target]
        border = torch.from_numpy(np.stack(borders)).to(target.device)
        weights = (self._pixel_weights(valid, safe) + border) * valid
        self._last = (target, weights)
        return weights

    def __call__(self, logits: torch.Tensor, target: torch.Tensor, totals: BatchTotals) -> torch.Tensor:
        _, safe = labels_of(target, self.ignore_index)
        per_pixel = F.cross_entropy(logits.float(), safe, reduction="none")  # (n, H, W)
        return divide((self.pixel_weights(target) * per_pixel).sum(), totals.pixel_weight)
