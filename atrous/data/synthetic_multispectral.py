"""Synthetic multispectral scenes: five 16-bit bands where one class pair is told apart by the
fifth band alone, deterministic by seed.

Each scene is bare soil with water bodies, fields of vegetation and green-painted surfaces
(roofs, sports pitches). The bands are reflectances x 10000 as Sentinel-2 L2A stores them:
red, green, blue, red edge, near infrared (NIR). Vegetation and green paint are drawn from
the SAME colour, red-edge value and texture; only NIR differs (leaves reflect 35-50 % of NIR,
paint 5-10 %: the vegetation "red edge"), so a model that sees the first three bands (or four)
cannot tell them apart and one that sees all five can. `synthetic_multispectral` gives the
five bands, `synthetic_multispectral_rgb` the same scenes' red, green and blue only (float32
in the same units), to train the comparison in docs/benchmarks.md.
"""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image, ImageDraw

from atrous.data.io import DataError
from atrous.data.meta import DatasetInfo
from atrous.data.registry import NO_ROOT, register_dataset

MULTISPECTRAL_INFO = DatasetInfo(
    name="synthetic_multispectral",
    class_names=("soil", "water", "vegetation", "green_paint"),
    palette=((150, 110, 70), (40, 90, 200), (40, 180, 40), (230, 0, 230)),
)
SOIL, WATER, VEGETATION, PAINT = range(4)
BANDS = ("red", "green", "blue", "red_edge", "nir")
# mean reflectance x 10000 per class and band (red, green, blue, red edge, nir)
REFLECTANCE = {
    SOIL: (2500, 2000, 1500, 2800, 3000),
    WATER: (300, 500, 700, 250, 150),
    VEGETATION: (500, 1100, 400, 1500, 4200),
    PAINT: (500, 1100, 400, 1500, 800),
}
_SPLIT_SEEDS = {"train": 10, "val": 11, "test": 12}


def render_multispectral(rng: np.random.Generator, size: int) -> tuple[np.ndarray, np.ndarray]:
    """((5, size, size) float32 reflectances x 10000, (size, size) uint8 classes)."""
    mask = Image.new("L", (size, size), SOIL)
    draw = ImageDraw.Draw(mask)
    for cls, count in ((WATER, 2), (VEGETATION, 4), (PAINT, 4)):
        for _ in range(int(rng.integers(1, count + 1))):
            x, y = rng.uniform(0, size, 2)
            w, h = rng.uniform(size * 0.08, size * 0.3, 2)
            box = (x - w, y - h, x + w, y + h)
            if rng.random() < 0.5:
                draw.ellipse(box, fill=cls)
            else:
                draw.rectangle(box, fill=cls)
    labels = np.asarray(mask, np.uint8)
    means = np.asarray([REFLECTANCE[c] for c in range(4)], np.float32)  # (4, 5)
    bands = means[labels].transpose(2, 0, 1)  # (5, H, W)
    # a texture shared by every band (illumination), then independent sensor noise per band
    shade = 1.0 + 0.15 * rng.standard_normal((1, size, size)).astype(np.float32)
    noise = rng.normal(0.0, 120.0, bands.shape).astype(np.float32)
    return np.clip(bands * shade + noise, 0, 10000).round().astype(np.float32), labels


class SyntheticMultispectral(torch.utils.data.Dataset):
    """`length` scenes of `size` x `size`; `bands`: how many of the five are given (3: RGB)."""

    info = MULTISPECTRAL_INFO

    def __init__(self, split: str = "train", *, length: int | None = None, size: int = 128, bands: int = 5) -> None:
        if split not in _SPLIT_SEEDS:
            raise DataError(f"synthetic_multispectral has no '{split}' split; choose one of: {', '.join(_SPLIT_SEEDS)}")
        self.seed, self.size, self.bands = _SPLIT_SEEDS[split], size, bands
        self.length = length if length is not None else (64 if split == "train" else 16)

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        if not 0 <= index < self.length:
            raise IndexError(index)
        image, labels = render_multispectral(np.random.default_rng([self.seed, index]), self.size)
        return torch.from_numpy(image[: self.bands].copy()), torch.from_numpy(labels.astype(np.int64))


@register_dataset("synthetic_multispectral", root=NO_ROOT)
def build_multispectral(split: str, *, synthetic_size: int = 128,
                        synthetic_length: int | None = None) -> SyntheticMultispectral:
    return SyntheticMultispectral(split, length=synthetic_length, size=synthetic_size)


@register_dataset("synthetic_multispectral_rgb", root=NO_ROOT)
def build_multispectral_rgb(split: str, *, synthetic_size: int = 128,
                            synthetic_length: int | None = None) -> SyntheticMultispectral:
    return SyntheticMultispectral(split, length=synthetic_length, size=synthetic_size, bands=3)
