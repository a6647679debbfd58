"""Joint transforms: each takes and returns the (image, mask) pair, with an explicit
`numpy.random.Generator` so that every sample is reproducible (and resumable) by seed.

image: uint8 (3, H, W) for 8-bit photographs, float32 (C, H, W) for 16-bit, float and
multi-band sources, until `Normalize`; then float (C, H, W). mask: int64 (H, W), or (K, H, W)
for the multilabel task (atrous.data.tasks): every transform moves its K planes together.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from atrous.data.io import DataError
from atrous.data.meta import IGNORE_INDEX

Pair = tuple[torch.Tensor, torch.Tensor]
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class Compose:
    def __init__(self, transforms: Sequence) -> None:
        self.transforms = list(transforms)

    def __call__(self, image: torch.Tensor, mask: torch.Tensor, rng: np.random.Generator) -> Pair:
        for transform in self.transforms:
            image, mask = transform(image, mask, rng)
        return image, mask


def _planes(mask: torch.Tensor) -> torch.Tensor:
    """A mask, (H, W) or a multilabel (K, H, W), as float (P, 1, H, W) planes to resample."""
    return mask.reshape(-1, 1, *mask.shape[-2:]).float()


def resize_pair(image: torch.Tensor, mask: torch.Tensor, size: tuple[int, int]) -> Pair:
    """Bilinear for the image, nearest for the mask."""
    img = F.interpolate(image[None].float(), size=size, mode="bilinear", align_corners=False)[0]
    img = img.round_().clamp_(0, 255).to(image.dtype) if image.dtype == torch.uint8 else img
    msk = F.interpolate(_planes(mask), size=size, mode="nearest").long().reshape(*mask.shape[:-2], *size)
    return img, msk


class RandomScale:
    """Rescale both by a factor drawn uniformly from [low, high] (DeepLab: 0.5..2.0)."""

    def __init__(self, low: float = 0.5, high: float = 2.0) -> None:
        if not 0 < low <= high:
            raise ValueError(f"scale range must satisfy 0 < low <= high, got ({low}, {high})")
        self.low, self.high = low, high

    def __call__(self, image: torch.Tensor, mask: torch.Tensor, rng: np.random.Generator) -> Pair:
        factor = rng.uniform(self.low, self.high)
        height, width = mask.shape[-2:]
        size = (max(1, round(height * factor)), max(1, round(width * factor)))
        return resize_pair(image, mask, size) if size != (height, width) else (image, mask)


class RandomCrop:
    """Crop `size` at a random place; pad first where smaller (image 0, mask ignore)."""

    def __init__(self, size: int | tuple[int, int], ignore_index: int = IGNORE_INDEX) -> None:
        self.size = (size, size) if isinstance(size, int) else tuple(size)
        self.ignore_index = ignore_index

    def __call__(self, image: torch.Tensor, mask: torch.Tensor, rng: np.random.Generator) -> Pair:
        crop_h, crop_w = self.size
        height, width = mask.shape[-2:]
        pad_h, pad_w = max(0, crop_h - height), max(0, crop_w - width)
        if pad_h or pad_w:
            image = F.pad(image, (0, pad_w, 0, pad_h), value=0)
            mask = F.pad(mask, (0, pad_w, 0, pad_h), value=self.ignore_index)
            height, width = mask.shape[-2:]
        top = int(rng.integers(0, height - crop_h + 1))
        left = int(rng.integers(0, width - crop_w + 1))
        return (
            image[:, top : top + crop_h, left : left + crop_w],
            mask[..., top : top + crop_h, left : left + crop_w],
        )


class RandomHorizontalFlip:
    def __init__(self, p: float = 0.5) -> None:
        self.p = p

    def __call__(self, image: torch.Tensor, mask: torch.Tensor, rng: np.random.Generator) -> Pair:
        if rng.random() < self.p:
            return image.flip(-1), mask.flip(-1)
        return image, mask


class ElasticDeform:
    """U-Net's elastic deformation (Ronneberger et al. 2015, Sec. 3.1): random displacement
    vectors on a coarse `grid` x `grid` grid (3 x 3), drawn from a Gaussian of `sigma` pixels
    (10), interpolated bicubically to every pixel; the image resampled bilinearly, the mask by
    nearest neighbour, both mirrored at the border."""

    def __init__(self, sigma: float = 10.0, grid: int = 3) -> None:
        if sigma < 0 or grid < 2:
            raise ValueError(f"elastic deformation needs sigma >= 0 and a grid of 2 or more, got {sigma}, {grid}")
        self.sigma, self.grid = sigma, grid

    def displacement(self, height: int, width: int, rng: np.random.Generator) -> torch.Tensor:
        """(2, H, W) per-pixel displacements (dy, dx) in pixels."""
        coarse = torch.from_numpy(rng.normal(0.0, self.sigma, size=(1, 2, self.grid, self.grid))).float()
        return F.interpolate(coarse, size=(height, width), mode="bicubic", align_corners=True)[0]

    def __call__(self, image: torch.Tensor, mask: torch.Tensor, rng: np.random.Generator) -> Pair:
        height, width = mask.shape[-2:]
        dy, dx = self.displacement(height, width, rng)
        ys, xs = torch.meshgrid(torch.arange(height, dtype=torch.float32), torch.arange(width, dtype=torch.float32),
                                indexing="ij")
        # grid_sample's coordinates: -1 and 1 are the centres of the corner pixels (align_corners)
        grid = torch.stack([(xs + dx) / max(width - 1, 1) * 2 - 1, (ys + dy) / max(height - 1, 1) * 2 - 1], dim=-1)
        warped = F.grid_sample(image[None].float(), grid[None], mode="bilinear", padding_mode="reflection",
                               align_corners=True)[0]
        warped = warped.round_().clamp_(0, 255).to(image.dtype) if image.dtype == torch.uint8 else warped
        planes = _planes(mask)  # (P, 1, H, W): one plane, or a multilabel mask's K
        labels = F.grid_sample(planes, grid[None].expand(len(planes), -1, -1, -1), mode="nearest",
                               padding_mode="reflection", align_corners=True).long().reshape(mask.shape)
        return warped, labels


class ColorJitter:
    """Brightness, contrast and saturation factors drawn from [1 - x, 1 + x]; image only."""

    def __init__(self, brightness: float = 0.3, contrast: float = 0.3, saturation: float = 0.3) -> None:
        self.brightness, self.contrast, self.saturation = brightness, contrast, saturation

    def __call__(self, image: torch.Tensor, mask: torch.Tensor, rng: np.random.Generator) -> Pair:
        img = image.float()
        b, c, s = (rng.uniform(1 - x, 1 + x) for x in (self.brightness, self.contrast, self.saturation))
        if image.dtype != torch.uint8:  # measured values (16-bit, float, N bands): brightness, contrast
            return (img * b - img.mean()) * c + img.mean(), mask  # around the mean; no colour, no clipping
        img = img * b
        img = (img - img.mean()) * c + img.mean()
        grey = img.mean(dim=0, keepdim=True)
        img = (img - grey) * s + grey
        return img.clamp_(0, 255).round_().to(torch.uint8), mask


def normalise(image: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """(..., C, H, W) -> float: uint8 images (x / 255 - mean) / std, with mean and std on the
    0-1 scale (ImageNet's); 16-bit, float and multi-band images (x - mean) / std, in the units
    the values are stored in. mean, std: (C,) tensors, one value per band."""
    bands = image.shape[-3]
    if bands != mean.numel():
        raise DataError(f"the image has {bands} bands but the normalisation (mean, std) has {mean.numel()}: "
                        "a model trained on other bands, or mean/std to give for these")
    shape = (bands, 1, 1)
    values = image.float() / 255.0 if image.dtype == torch.uint8 else image.float()
    return (values - mean.to(values.device).view(shape)) / std.to(values.device).view(shape)


class Normalize:
    """The image as the model takes it: `normalise` with this mean and std per band."""

    def __init__(self, mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD) -> None:
        self.mean = torch.tensor(mean, dtype=torch.float32)
        self.std = torch.tensor(std, dtype=torch.float32)

    def __call__(self, image: torch.Tensor, mask: torch.Tensor, rng: np.random.Generator | None = None) -> Pair:
        return normalise(image, self.mean, self.std), mask


def train_transform(
    crop_size: int | None,
    *,
    scale: tuple[float, float] | None = (0.5, 2.0),
    flip: bool = True,
    jitter: float = 0.0,
    elastic: float = 0.0,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
) -> Compose:
    """DeepLab's training augmentation: random scale, random crop padded with ignore,
    horizontal flip; optional elastic deformation of the crop (U-Net's, `elastic` pixels on a
    3 x 3 grid) and colour jitter; normalisation."""
    steps: list = []
    if scale is not None and scale != (1.0, 1.0):
        steps.append(RandomScale(*scale))
    if crop_size:
        steps.append(RandomCrop(crop_size))
    if elastic > 0:
        steps.append(ElasticDeform(elastic))
    if flip:
        steps.append(RandomHorizontalFlip())
    if jitter > 0:
        steps.append(ColorJitter(jitter, jitter, jitter))
    steps.append(Normalize(mean, std))
    return Compose(steps)


def eval_transform(mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD) -> Compose:
    return Compose([Normalize(mean, std)])
