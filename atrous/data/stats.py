"""What a dataset holds, measured by reading it: per-band statistics (the normalisation to
train with), value ranges, image sizes and class frequencies (`atrous data stats`); and every
bad pair of a dataset listed at once (`atrous data check`).

Statistics are on the scale the model's normalisation uses (atrous.data.transforms.normalise):
8-bit photographs scaled to 0-1, every other image in its stored units. Sums are float64, so a
few thousand 16-bit tiles add up without loss.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import numpy as np
import torch

from atrous.data.io import DataError
from atrous.data.meta import IGNORE_INDEX


@dataclass
class DatasetStats:
    """Per band: mean, std, min, max; the images' sizes; labelled pixels per class (or per label)."""

    images: int = 0
    dtype: str = ""
    mean: list[float] = field(default_factory=list)
    std: list[float] = field(default_factory=list)
    minimum: list[float] = field(default_factory=list)
    maximum: list[float] = field(default_factory=list)
    sizes: Counter = field(default_factory=Counter)  # (H, W) -> images
    class_pixels: list[int] = field(default_factory=list)
    void_pixels: int = 0

    def flags(self) -> str:
        """The normalisation as `atrous train` takes it."""
        return (f"--mean {' '.join(f'{v:.6g}' for v in self.mean)} "
                f"--std {' '.join(f'{v:.6g}' for v in self.std)}")

    def as_dict(self) -> dict:
        sizes = {f"{h}x{w}": n for (h, w), n in sorted(self.sizes.items())}
        return {"images": self.images, "dtype": self.dtype, "mean": self.mean, "std": self.std,
                "min": self.minimum, "max": self.maximum, "sizes": sizes, "class_pixels": self.class_pixels,
                "void_pixels": self.void_pixels}


class _Moments:
    """Running per-band sums in float64 (sum, sum of squares, count, min, max)."""

    def __init__(self, bands: int) -> None:
        self.total = torch.zeros(bands, dtype=torch.float64)
        self.squares = torch.zeros(bands, dtype=torch.float64)
        self.count = 0
        self.low = torch.full((bands,), float("inf"), dtype=torch.float64)
        self.high = torch.full((bands,), float("-inf"), dtype=torch.float64)

    def add(self, values: torch.Tensor) -> None:  # (C, H, W) on the normalisation's scale
        flat = values.reshape(values.shape[0], -1).double()
        self.total += flat.sum(dim=1)
        self.squares += (flat * flat).sum(dim=1)
        self.count += flat.shape[1]
        self.low = torch.minimum(self.low, flat.min(dim=1).values)
        self.high = torch.maximum(self.high, flat.max(dim=1).values)

    def mean_std(self) -> tuple[list[float], list[float]]:
        mean = self.total / self.count
        variance = (self.squares / self.count - mean * mean).clamp_min(0)
        return mean.tolist(), variance.sqrt().tolist()


def dataset_stats(dataset: torch.utils.data.Dataset, num_classes: int, *, indices: Iterable[int] | None = None,
                  advance: Callable[[int], None] = lambda n: None) -> DatasetStats:
    """Reads the images at `indices` (default all) of `dataset` and measures them."""
    stats, moments = DatasetStats(), None
    for index in range(len(dataset)) if indices is None else indices:
        image, mask = dataset[index]
        if moments is None:
            moments = _Moments(image.shape[0])
            stats.dtype = str(image.dtype).removeprefix("torch.")
            stats.class_pixels = [0] * num_classes
        elif image.shape[0] != moments.total.numel():
            raise DataError(f"image {index} of the dataset has {image.shape[0]} bands, the first had "
                            f"{moments.total.numel()}; `atrous data check` lists every such image")
        moments.add(image.float() / 255.0 if image.dtype == torch.uint8 else image)
        stats.sizes[tuple(image.shape[-2:])] += 1
        _count_labels(stats, mask, num_classes)
        stats.images += 1
        advance(1)
    if moments is None:
        raise DataError("the dataset holds no images")
    stats.mean, stats.std = moments.mean_std()
    stats.minimum, stats.maximum = moments.low.tolist(), moments.high.tolist()
    return stats


def _count_labels(stats: DatasetStats, mask: torch.Tensor, num_classes: int) -> None:
    """Labelled pixels per class of an (H, W) mask, or positives per label of a (K, H, W) one."""
    if mask.ndim == 3:  # multi-label: 0/1 per label, void 255
        positives = (mask == 1).sum(dim=(1, 2)).tolist()
        stats.void_pixels += int((mask == IGNORE_INDEX).sum())
    else:
        labelled = mask[mask != IGNORE_INDEX]
        stats.void_pixels += mask.numel() - labelled.numel()
        positives = torch.bincount(labelled.flatten(), minlength=num_classes)[:num_classes].tolist()
    for k, count in enumerate(positives[:num_classes]):
        stats.class_pixels[k] += int(count)


def spaced_indices(length: int, at_most: int | None) -> list[int]:
    """`at_most` indices spread evenly over the dataset (all when None or more)."""
    if at_most is None or at_most >= length:
        return list(range(length))
    return sorted({round(i) for i in np.linspace(0, length - 1, at_most)})


def check_dataset(dataset: torch.utils.data.Dataset, *,
                  check_mask: Callable[[torch.Tensor, str], str | None] | None = None,
                  advance: Callable[[int], None] = lambda n: None) -> list[str]:
    """Every item read; one line per problem (unreadable file, sizes that differ, labels outside
    the classes, a band count unlike the first image's, what `check_mask(mask, name)` says of a mask),
    without stopping at the first."""
    problems: list[str] = []
    bands: tuple[int, str] | None = None
    for index in range(len(dataset)):
        name = _item_name(dataset, index)
        try:
            image, mask = dataset[index]
        except DataError as err:
            problems.append(str(err))
        else:
            if bands is None:
                bands = (image.shape[0], name)
            elif image.shape[0] != bands[0]:
                problems.append(f"image {name} has {image.shape[0]} bands; {bands[1]} (the first) has {bands[0]}")
            problem = check_mask(mask, f"of {name}") if check_mask is not None else None
            if problem:
                problems.append(problem)
        advance(1)
    return problems


def _item_name(dataset: torch.utils.data.Dataset, index: int) -> str:
    """The image file of item `index` where the dataset lists its files, else its number."""
    items = getattr(dataset, "items", None)
    if isinstance(items, list | tuple) and index < len(items) and isinstance(items[index], tuple | list):
        return str(items[index][0])
    return f"#{index}"
