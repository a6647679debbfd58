"""The synthetic scene generator: the embedded default dataset, deterministic by seed.

Each scene is a textured ground with a road band and a water band. What it exercises:
- 7 classes: ground, road, water, car, boat, pole, ball;
- a context pair: cars and boats are drawn from the *same* shapes, colours and textures;
  only what surrounds them (road or water) tells them apart, so global context matters;
- scale: vehicles span 4x in width (12..48 px at 128x128), balls 6x in radius;
- occlusion: balls are drawn over vehicles, poles over everything, vehicles overlap;
- thin structures: poles (2-3 px wide) and their cross-bars (1-2 px);
- textured backgrounds (noise, lane markings, waves), colour edges on object boundaries;
- photometric noise on top.
Sizes scale with the image size (the numbers above are for 128x128).
"""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image, ImageDraw

from atrous.data.io import DataError
from atrous.data.meta import DatasetInfo
from atrous.data.registry import NO_ROOT, register_dataset

SYNTHETIC_INFO = DatasetInfo(
    name="synthetic",
    class_names=("ground", "road", "water", "car", "boat", "pole", "ball"),
    palette=(
        (128, 96, 64),
        (128, 128, 128),
        (40, 90, 200),
        (220, 40, 40),
        (240, 200, 0),
        (255, 255, 255),
        (60, 200, 60),
    ),
)
GROUND, ROAD, WATER, CAR, BOAT, POLE, BALL = range(7)
# the labels of the binary and multilabel tasks, each a set of the scene's classes; they overlap:
# a boat is a vehicle and on water, a car a vehicle and man-made
SYNTHETIC_LABELS = {"vehicle": (CAR, BOAT), "on_water": (WATER, BOAT), "man_made": (ROAD, CAR, POLE),
                    "ball": (BALL,)}
SYNTHETIC_LABEL_COLOURS = ((220, 40, 40), (40, 90, 200), (128, 128, 128), (60, 200, 60))
_SPLIT_SEEDS = {"train": 0, "val": 1, "test": 2}


def _smooth_noise(rng: np.random.Generator, size: int, cells: int, channels: int) -> np.ndarray:
    """Low-frequency noise in [-1, 1]: a coarse random grid resized bilinearly."""
    coarse = rng.uniform(-1, 1, (cells, cells, channels)).astype(np.float32)
    layers = [
        np.asarray(Image.fromarray(coarse[..., c]).resize((size, size), Image.BILINEAR))
        for c in range(channels)
    ]
    return np.stack(layers, axis=-1)


def _vehicle(rng: np.random.Generator, draw_img: ImageDraw.ImageDraw, draw_mask: ImageDraw.ImageDraw,
             cls: int, box: tuple[int, int, int, int]) -> None:
    """A car or a boat: same body shape, colours and markings; only the class differs."""
    x0, y0, x1, y1 = box
    body = tuple(int(v) for v in rng.integers(30, 230, 3))
    radius = max(1, (y1 - y0) // 3)
    draw_img.rounded_rectangle(box, radius=radius, fill=body)
    draw_mask.rounded_rectangle(box, radius=radius, fill=cls)
    # a darker cabin and two lighter windows, inside the body so edges follow the mask
    w, h = x1 - x0, y1 - y0
    dark = tuple(int(c * 0.5) for c in body)
    draw_img.rectangle((x0 + w // 4, y0 + h // 5, x1 - w // 4, y0 + h // 2), fill=dark)
    light = tuple(min(255, int(c * 0.6 + 110)) for c in body)
    if h >= 10:
        draw_img.rectangle((x0 + w // 4 + 1, y0 + h // 5 + 1, x0 + w // 2 - 1, y0 + h // 2 - 1), fill=light)


class SyntheticScenes(torch.utils.data.Dataset):
    """`length` scenes of `size` x `size`; item i of a split is the same for every run."""

    info = SYNTHETIC_INFO

    def __init__(self, split: str = "train", *, length: int | None = None, size: int = 128,
                 seed: int = 0, cache: bool = True) -> None:
        if split not in _SPLIT_SEEDS:
            raise DataError(f"synthetic split must be one of {list(_SPLIT_SEEDS)}, got '{split}'")
        if size < 32:
            raise DataError(f"synthetic_size must be at least 32, got {size}", argument="synthetic_size")
        self.split = split
        self.size = size
        self.seed = seed
        self.length = length if length is not None else (2000 if split == "train" else 200)
        # rendered scenes kept in memory (uint8), as rendering costs more than a lookup
        self._cache: dict[int, tuple[np.ndarray, np.ndarray]] | None = {} if cache else None

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        if not 0 <= index < self.length:
            raise IndexError(index)
        if self._cache is not None and index in self._cache:
            image, mask = self._cache[index]
        else:
            image, mask = render_scene(np.random.default_rng([self.seed, _SPLIT_SEEDS[self.split], index]), self.size)
            if self._cache is not None:
                self._cache[index] = (image, mask)
        return torch.from_numpy(image).permute(2, 0, 1).contiguous(), torch.from_numpy(mask).long()


def render_scene(rng: np.random.Generator, size: int) -> tuple[np.ndarray, np.ndarray]:
    """One scene: (H, W, 3) uint8 image and (H, W) uint8 class map."""
    s = size / 128.0  # every length below is for 128x128 and scales with the image
    img, mask = _backgrounds(rng, size)
    pil_img, pil_mask = Image.fromarray(img), Image.fromarray(mask)
    draw_img, draw_mask = ImageDraw.Draw(pil_img), ImageDraw.Draw(pil_mask)
    for cls, region in ((CAR, ROAD), (BOAT, WATER)):
        for _ in range(rng.integers(1, 4)):
            width = rng.uniform(12, 48) * s
            x0 = rng.uniform(-0.1 * width, size - 0.9 * width)
            top, bottom = _band_at(mask, region, x0, x0 + width)
            height = min(width * rng.uniform(0.4, 0.6), 0.9 * (bottom - top))
            y0 = rng.uniform(top, bottom - height)
            _vehicle(rng, draw_img, draw_mask, cls, (int(x0), int(y0), int(x0 + width), int(y0 + height)))
    for _ in range(rng.integers(1, 5)):
        r = rng.uniform(4, 24) * s
        cx, cy = rng.uniform(0, size, 2)
        colour = tuple(int(v) for v in rng.integers(0, 256, 3))
        box = (cx - r, cy - r, cx + r, cy + r)
        draw_img.ellipse(box, fill=colour)
        draw_mask.ellipse(box, fill=BALL)
        draw_img.ellipse((cx - r / 2, cy - r / 2, cx, cy), fill=tuple(min(255, c + 60) for c in colour))
    for _ in range(rng.integers(1, 4)):
        _pole(rng, draw_img, draw_mask, size, s)
    image = np.asarray(pil_img).astype(np.float32)
    image *= rng.uniform(0.8, 1.2)  # global brightness
    image += rng.normal(0, 6, image.shape)  # sensor noise
    return np.clip(image, 0, 255).astype(np.uint8), np.asarray(pil_mask).copy()


def _backgrounds(rng: np.random.Generator, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Textured ground, a road band and a water band at random heights."""
    ys = np.arange(size)[:, None]
    xs = np.arange(size)[None, :]
    ground = np.array([120, 95, 60], np.float32) + 35 * _smooth_noise(rng, size, 16, 3)
    image = ground + 12 * _smooth_noise(rng, size, 64, 1)
    mask = np.full((size, size), GROUND, np.uint8)
    heights = rng.uniform(0.22, 0.34, 2) * size
    road_first = rng.random() < 0.5
    gap = rng.uniform(0.05, 0.2) * size
    start = rng.uniform(0.02, 0.98 - (heights.sum() + gap) / size) * size
    first = (start, start + heights[0])
    second = (first[1] + gap, first[1] + gap + heights[1])
    road, water = (first, second) if road_first else (second, first)
    tilt = rng.uniform(-0.15, 0.15)
    for cls, (top, bottom) in ((ROAD, road), (WATER, water)):
        centre = (top + bottom) / 2 + tilt * (xs - size / 2)
        inside = np.abs(ys - centre) <= (bottom - top) / 2
        mask[inside] = cls
        if cls == ROAD:
            tex = np.array([105, 105, 110], np.float32) + 18 * _smooth_noise(rng, size, 32, 1)
            lane = (np.abs(ys - centre) < max(1, size // 96)) & ((xs // max(4, size // 12)) % 2 == 0)
            tex = np.where(lane[..., None], np.float32(230), tex)
        else:
            phase = rng.uniform(0, 2 * np.pi)
            waves = np.sin(xs * rng.uniform(0.3, 0.6) * 128 / size + ys * 0.9 * 128 / size + phase)
            tex = np.array([45, 90, 170], np.float32) + 20 * waves[..., None] + 15 * _smooth_noise(rng, size, 16, 3)
        image = np.where(inside[..., None], tex, image)
    return np.clip(image, 0, 255).astype(np.uint8), mask


def _band_at(mask: np.ndarray, cls: int, x0: float, x1: float) -> tuple[float, float]:
    """Rows inside band `cls` at both ends of [x0, x1] (the band may be tilted)."""
    cols = [int(np.clip(x, 0, mask.shape[1] - 1)) for x in (x0, x1)]
    tops, bottoms = [], []
    for col in cols:
        rows = np.flatnonzero(mask[:, col] == cls)
        tops.append(rows.min() if rows.size else 0)
        bottoms.append(rows.max() if rows.size else 1)
    return float(max(tops)), float(max(max(tops) + 1, min(bottoms)))


def _pole(rng: np.random.Generator, draw_img: ImageDraw.ImageDraw, draw_mask: ImageDraw.ImageDraw,
          size: int, s: float) -> None:
    """A thin, nearly vertical pole (1-2 px) with a cross-bar."""
    x = rng.uniform(0, size)
    top, bottom = rng.uniform(0, 0.5) * size, rng.uniform(0.6, 1.0) * size
    lean = rng.uniform(-0.1, 0.1) * (bottom - top)
    width = int(rng.integers(2, 4) * max(1, round(s)))
    shade = int(rng.integers(200, 256))
    colour = (shade, shade, shade - 20)
    line = [(x, top), (x + lean, bottom)]
    draw_img.line(line, fill=colour, width=width)
    draw_mask.line(line, fill=POLE, width=width)
    arm = rng.uniform(6, 16) * s
    bar = [(x, top + 2 * s), (x + arm * rng.choice([-1, 1]), top + 2 * s)]
    draw_img.line(bar, fill=colour, width=max(1, width - 1))
    draw_mask.line(bar, fill=POLE, width=max(1, width - 1))


class SyntheticLabels(torch.utils.data.Dataset):
    """The scenes for the binary task (the vehicles: cars and boats) or the multilabel task
    (the overlapping labels of SYNTHETIC_LABELS), their masks int64 (H, W) or (K, H, W) of 0/1."""

    def __init__(self, scenes: SyntheticScenes, task: str) -> None:
        names = ("vehicle",) if task == "binary" else tuple(SYNTHETIC_LABELS)
        colours = SYNTHETIC_LABEL_COLOURS[: len(names)]
        self.scenes, self.task = scenes, task
        self.info = DatasetInfo("synthetic", names, colours, task=task)
        self.table = torch.zeros(len(names), len(SYNTHETIC_INFO.class_names), dtype=torch.int64)
        for label, name in enumerate(names):
            self.table[label, list(SYNTHETIC_LABELS[name])] = 1

    def __len__(self) -> int:
        return len(self.scenes)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        image, classes = self.scenes[index]
        planes = self.table[:, classes]  # (K, H, W)
        return image, planes[0] if self.task == "binary" else planes


@register_dataset("synthetic", root=NO_ROOT)
def build_synthetic(split: str, *, synthetic_size: int = 128, synthetic_length: int | None = None,
                    task: str = "multiclass") -> torch.utils.data.Dataset:
    """The synthetic scenes (`--synthetic-size`, `--synthetic-length`); no files needed. For the
    binary and multilabel tasks, labels made of the scenes' classes (SyntheticLabels)."""
    scenes = SyntheticScenes(split, size=synthetic_size, length=synthetic_length)
    return scenes if task == "multiclass" else SyntheticLabels(scenes, task)
