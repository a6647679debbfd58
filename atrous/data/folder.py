"""Your own data: `<root>/images/*` and `<root>/masks/*.png` with matching stems
(or `<root>/<split>/images` and `<root>/<split>/masks`).

Masks are index PNGs ('L') or palette PNGs ('P', whose indices are the classes).
Classes come from `<root>/classes.json` - {"classes": [...], "palette": [[r, g, b], ...],
"ignore_index": 255} (palette optional) - or from `num_classes`.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator

import numpy as np
import torch

from atrous.data.io import DataError, check_pair, read_image, read_mask
from atrous.data.meta import IGNORE_INDEX, DatasetInfo, default_palette
from atrous.data.registry import register_dataset

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")


@register_dataset("folder", needs="with images/ and masks/")
class FolderDataset(torch.utils.data.Dataset):
    def __init__(self, root: str, split: str | None = None, *, num_classes: int | None = None) -> None:
        if not os.path.isdir(root):
            raise DataError(f"dataset folder not found: {root}")
        base = _split_folder(root, split)
        self.image_dir, self.mask_dir = os.path.join(base, "images"), os.path.join(base, "masks")
        for folder in (self.image_dir, self.mask_dir):
            if not os.path.isdir(folder):
                raise DataError(f"folder dataset needs {folder} (images/ and masks/ with matching names)")
        self.info, self.source_void = _read_info(root, num_classes)
        self.items = _pair_files(self.image_dir, self.mask_dir)

    def __len__(self) -> int:
        return len(self.items)

    def labels(self) -> Iterator[np.ndarray]:
        """Every label map with void as 255, for --class-weights; images are not read."""
        for _, mask_path in self.items:
            mask = read_mask(mask_path)
            yield np.where(mask == self.source_void, IGNORE_INDEX, mask) if self.source_void != IGNORE_INDEX else mask

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        image_path, mask_path = self.items[index]
        image = read_image(image_path)
        mask = read_mask(mask_path)
        if self.source_void != IGNORE_INDEX:  # void is 255 in every atrous dataset
            mask = np.where(mask == self.source_void, IGNORE_INDEX, mask)
        return image, check_pair(
            image, mask, num_classes=self.info.num_classes, ignore_index=IGNORE_INDEX, mask_path=mask_path,
        )


def _split_folder(root: str, split: str | None) -> str:
    """`<root>/<split>` when it exists; a folder without splits is all training data."""
    if split is None or os.path.isdir(os.path.join(root, split)):
        return os.path.join(root, split) if split else root
    if split == "train":
        return root
    raise DataError(f"folder dataset {root} has no '{split}' split (expected {os.path.join(root, split)})")


def _read_info(root: str, num_classes: int | None) -> tuple[DatasetInfo, int]:
    """The dataset's classes and the void value its masks use (mapped to 255)."""
    path = os.path.join(root, "classes.json")
    if os.path.isfile(path):
        try:
            with open(path) as handle:
                spec = json.load(handle)
            names = tuple(spec["classes"])
        except (json.JSONDecodeError, KeyError, TypeError) as err:
            raise DataError(f"{path}: expected {{\"classes\": [...]}}: {err}") from err
        palette = spec.get("palette", default_palette(len(names)))
        if len(palette) != len(names) or any(len(c) != 3 for c in palette):
            raise DataError(f"{path}: 'palette' needs one [r, g, b] per class ({len(names)} classes)")
        void = int(spec.get("ignore_index", IGNORE_INDEX))
        return DatasetInfo("folder", names, tuple(tuple(int(v) for v in c) for c in palette)), void
    if num_classes is None:
        raise DataError(f"folder dataset {root} has no classes.json; add one or pass --num-classes")
    if num_classes < 1:
        raise DataError(f"--num-classes must be at least 1, got {num_classes}")
    names = tuple(f"class_{i}" for i in range(num_classes))
    return DatasetInfo("folder", names, default_palette(num_classes)), IGNORE_INDEX


def _pair_files(image_dir: str, mask_dir: str) -> list[tuple[str, str]]:
    images = {
        os.path.splitext(name)[0]: os.path.join(image_dir, name)
        for name in sorted(os.listdir(image_dir))
        if name.lower().endswith(IMAGE_SUFFIXES)
    }
    masks = {
        os.path.splitext(name)[0]: os.path.join(mask_dir, name)
        for name in sorted(os.listdir(mask_dir))
        if name.lower().endswith(IMAGE_SUFFIXES)
    }
    if not images:
        raise DataError(f"no images found in {image_dir}")
    missing = sorted(set(images) - set(masks))
    if missing:
        raise DataError(f"image {images[missing[0]]} has no mask in {mask_dir} ({len(missing)} unmatched)")
    return [(images[stem], masks[stem]) for stem in sorted(images)]
