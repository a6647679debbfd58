"""What the native-layout datasets (VOC, VOC + SBD, Cityscapes, ADE20K) share: a list of
(image file, label file) pairs, a label decoder per dataset, and the checks on both.

A subclass sets `info` and `items` and defines `read_label(path)`, which returns the label
file's pixels as training indices: uint8 (H, W), 0..num_classes-1 and 255 for void.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator

import numpy as np
import torch

from atrous.data.io import DataError, check_pair, read_image
from atrous.data.meta import IGNORE_INDEX, DatasetInfo


class PairedFiles(torch.utils.data.Dataset):
    info: DatasetInfo
    items: list[tuple[str, str]]  # (image path, label path)

    def read_label(self, path: str) -> np.ndarray:
        raise NotImplementedError

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        image_path, label_path = self.items[index]
        image = read_image(image_path)
        return image, check_pair(image, self.read_label(label_path), num_classes=self.info.num_classes,
                                 ignore_index=IGNORE_INDEX, mask_path=label_path)

    def labels(self) -> Iterator[np.ndarray]:
        """Every label map of the split, decoded (for class weights); images are not read."""
        for _, label_path in self.items:
            yield self.read_label(label_path)


def read_id_list(path: str, what: str) -> list[str]:
    """A split file: one image id per line (VOC's ImageSets, SBD's train.txt / val.txt)."""
    if not os.path.isfile(path):
        raise DataError(f"{what} split file not found: {path}")
    with open(path) as handle:
        ids = [line.split()[0] for line in handle if line.strip()]
    if not ids:
        raise DataError(f"{what} split file is empty: {path}")
    return ids


def require_files(paths: Iterable[str], what: str) -> None:
    """One DataError naming the first missing file (and how many are missing)."""
    missing = [path for path in paths if not os.path.isfile(path)]
    if missing:
        raise DataError(f"{what} file not found: {missing[0]} ({len(missing)} missing)")


def require_folder(path: str, what: str, hint: str = "give data_root") -> None:
    """A dataset's folder (under its `data_root`) must exist; DataError naming `data_root` else."""
    if not os.path.isdir(path):
        raise DataError(f"{what} folder not found: {path} ({hint})", argument="data_root")


def jpeg_png_pairs(image_dir: str, label_dir: str, what: str) -> list[tuple[str, str]]:
    """Every `<stem>.jpg` of image_dir (sorted) with `<stem>.png` of label_dir (ADE20K, COCO-Stuff);
    one DataError naming the first label missing."""
    stems = sorted(name[:-4] for name in os.listdir(image_dir) if name.lower().endswith(".jpg"))
    if not stems:
        raise DataError(f"no .jpg images in {image_dir}")
    items = [(os.path.join(image_dir, f"{s}.jpg"), os.path.join(label_dir, f"{s}.png")) for s in stems]
    missing = [label for _, label in items if not os.path.isfile(label)]
    if missing:
        raise DataError(f"{what} not found: {missing[0]} ({len(missing)} images have none)")
    return items


def lookup_table(pairs: Iterable[tuple[int, int]]) -> np.ndarray:
    """A 256-entry uint8 table mapping source label values to training indices; every
    value not in `pairs` maps to void (255)."""
    table = np.full(256, IGNORE_INDEX, np.uint8)
    for source, target in pairs:
        table[source] = target
    return table
