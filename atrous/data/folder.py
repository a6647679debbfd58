"""Your own data: `<root>/images/*` and `<root>/masks/*.png` with matching stems
(or `<root>/<split>/images` and `<root>/<split>/masks`).

Masks are index PNGs ('L') or palette PNGs ('P', whose indices are the classes).
Classes come from `<root>/classes.json` - {"classes": [...], "palette": [[r, g, b], ...],
"ignore_index": 255} (palette optional) - or from `num_classes`.

`task="binary"`: one mask per image, 0/1 or 0/255 (atrous.data.masks says how 255 is read;
classes.json's "foreground" settles it); classes.json names the foreground alone (or two
classes, background first). `task="multilabel"`: `masks/<stem>.tif` (K bands) or `.npy`, or
`masks/<label>/<stem>.png` one 0/1 (or 0/255) PNG per label; the labels are classes.json's
classes, else the folders under masks/ (sorted), else `num_classes` of them.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Iterator

import numpy as np
import torch

from atrous.data.io import DataError, check_pair, read_image, read_mask
from atrous.data.masks import read_task_mask
from atrous.data.meta import IGNORE_INDEX, DatasetInfo, default_palette
from atrous.data.registry import register_dataset
from atrous.data.tasks import binary_info, check_task

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")
MASK_SUFFIXES = (*IMAGE_SUFFIXES, ".npy")


@register_dataset("folder", needs="with images/ and masks/")
class FolderDataset(torch.utils.data.Dataset):
    def __init__(self, root: str, split: str | None = None, *, num_classes: int | None = None,
                 task: str = "multiclass") -> None:
        if not os.path.isdir(root):
            raise DataError(f"dataset folder not found: {root}")
        base = _split_folder(root, split)
        self.image_dir, self.mask_dir = os.path.join(base, "images"), os.path.join(base, "masks")
        for folder in (self.image_dir, self.mask_dir):
            if not os.path.isdir(folder):
                raise DataError(f"folder dataset needs {folder} (images/ and masks/ with matching names)")
        self.task = check_task(task)
        label_dirs = _label_folders(self.mask_dir) if task == "multilabel" else []
        self.info, self.source_void = _task_info(root, num_classes, task, label_dirs)
        self.foreground = _foreground(root)
        self.items = (_pair_label_files(self.image_dir, self.mask_dir, self.info.class_names) if label_dirs
                      else _pair_files(self.image_dir, self.mask_dir))

    def __len__(self) -> int:
        return len(self.items)

    def labels(self) -> Iterator[np.ndarray]:
        """Every label map with void as 255, for --class-weights; images are not read."""
        if self.task != "multiclass":
            yield from (self.task_mask(index) for index in range(len(self.items)))
            return
        for _, mask_path in self.items:
            mask = read_mask(mask_path)
            yield np.where(mask == self.source_void, IGNORE_INDEX, mask) if self.source_void != IGNORE_INDEX else mask

    def task_mask(self, index: int) -> np.ndarray:
        """Item `index`'s binary (H, W) or multilabel (K, H, W) mask, int64 0/1/255."""
        return read_task_mask(self.items[index][1], self.task, self.info.num_classes, foreground=self.foreground,
                              void=self.source_void)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        image_path, mask_path = self.items[index]
        image = read_image(image_path)
        if self.task != "multiclass":
            return image, _fitting(image, self.task_mask(index), mask_path)
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
        raise DataError(f"folder dataset {root} has no classes.json; add one or give num_classes", argument="num_classes")
    if num_classes < 1:
        raise DataError(f"num_classes must be at least 1, got {num_classes}", argument="num_classes")
    names = tuple(f"class_{i}" for i in range(num_classes))
    return DatasetInfo("folder", names, default_palette(num_classes)), IGNORE_INDEX


def _pair_files(image_dir: str, mask_dir: str) -> list[tuple[str, str]]:
    images = {
        os.path.splitext(name)[0]: os.path.join(image_dir, name)
        for name in sorted(os.listdir(image_dir))
        if name.lower().endswith(IMAGE_SUFFIXES)
    }
    masks = _by_stem(mask_dir, MASK_SUFFIXES)
    if not images:
        raise DataError(f"no images found in {image_dir}")
    missing = sorted(set(images) - set(masks))
    if missing:
        raise DataError(f"image {images[missing[0]]} has no mask in {mask_dir} ({len(missing)} unmatched)")
    return [(images[stem], masks[stem]) for stem in sorted(images)]


def _foreground(root: str) -> int | None:
    """classes.json's "foreground" (1 or 255): how binary masks' 255 is read (atrous.data.masks)."""
    path = os.path.join(root, "classes.json")
    if not os.path.isfile(path):
        return None
    with open(path) as handle:
        value = json.load(handle).get("foreground")
    if value not in (None, 1, 255):
        raise DataError(f"{path}: \"foreground\" is 1 or 255 (the mask value of the foreground), got {value!r}")
    return value


def _task_info(root: str, num_classes: int | None, task: str, label_dirs: list[str]) -> tuple[DatasetInfo, int]:
    """The classes (labels) for the task and the void value of the masks."""
    described = num_classes is not None or os.path.isfile(os.path.join(root, "classes.json"))
    if task == "multilabel" and label_dirs and not described:
        names = tuple(label_dirs)
        return DatasetInfo("folder", names, default_palette(len(names) + 1)[1:], task=task), IGNORE_INDEX
    if task == "binary" and not described:
        return DatasetInfo("folder", ("foreground",), ((255, 255, 255),), task=task), IGNORE_INDEX
    info, void = _read_info(root, num_classes)
    if task == "binary":
        return binary_info(info), void
    return (dataclasses.replace(info, task=task) if task == "multilabel" else info), void


def _label_folders(mask_dir: str) -> list[str]:
    """The per-label folders of a multilabel dataset (masks/<label>/), sorted; [] for mask files."""
    return sorted(name for name in os.listdir(mask_dir) if os.path.isdir(os.path.join(mask_dir, name)))


def _pair_label_files(image_dir: str, mask_dir: str, labels: tuple[str, ...]) -> list[tuple[str, tuple[str, ...]]]:
    """Each image with its mask in every label's folder; DataError naming the first missing one."""
    images = _by_stem(image_dir, IMAGE_SUFFIXES)
    if not images:
        raise DataError(f"no images found in {image_dir}")
    per_label = {}
    for label in labels:
        folder = os.path.join(mask_dir, label)
        if not os.path.isdir(folder):
            raise DataError(f"multilabel masks: no folder {folder} for label '{label}' (masks/<label>/<stem>.png)")
        per_label[label] = _by_stem(folder, MASK_SUFFIXES)
    for label, masks in per_label.items():
        missing = sorted(set(images) - set(masks))
        if missing:
            raise DataError(f"image {images[missing[0]]} has no mask for label '{label}' (expected "
                            f"{os.path.join(mask_dir, label, missing[0])}.png; {len(missing)} missing): add one, "
                            "all 0 where the label is absent, 255 where unknown")
    return [(images[stem], tuple(per_label[label][stem] for label in labels)) for stem in sorted(images)]


def _by_stem(folder: str, suffixes: tuple[str, ...]) -> dict[str, str]:
    return {os.path.splitext(name)[0]: os.path.join(folder, name) for name in sorted(os.listdir(folder))
            if name.lower().endswith(suffixes)}


def _fitting(image: torch.Tensor, mask: np.ndarray, mask_path: str | tuple[str, ...]) -> torch.Tensor:
    """The mask as a tensor when its height and width are the image's."""
    if tuple(mask.shape[-2:]) != tuple(image.shape[-2:]):
        where = mask_path[0] if isinstance(mask_path, tuple) else mask_path
        raise DataError(f"mask {where} is {mask.shape[-1]}x{mask.shape[-2]} but its image is "
                        f"{image.shape[-1]}x{image.shape[-2]}")
    return torch.from_numpy(mask)
