"""ISBI 2012 EM segmentation challenge data (Arganda-Carreras et al. 2015), the U-Net
paper's first dataset (Ronneberger et al. 2015, Sec. 4).

`<root>/image/<n>.png`: greyscale serial-section EM slices (read as 3 equal RGB channels,
like every atrous image, so the engine's normalisation and models apply unchanged);
`<root>/label/<n>.png`: 0 = membrane -> class 0, 255 = cell interior -> class 1.

No labelled test set is public, so slices are held out: `train` = slices 0-24,
`val` = slices 25-29, `all` = 0-29.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import numpy as np
import torch

from atrous.data.io import DataError, check_pair, read_image, read_mask
from atrous.data.meta import IGNORE_INDEX, DatasetInfo
from atrous.data.registry import register_dataset

ISBI_INFO = DatasetInfo(
    name="isbi2012",
    class_names=("membrane", "cell"),
    palette=((0, 0, 0), (255, 255, 255)),
)
ISBI_SPLITS = {"train": range(0, 25), "val": range(25, 30), "all": range(0, 30)}
SOURCE_CELL = 255  # label PNG value of cell interior; membrane is 0


@register_dataset("isbi2012", root="isbi2012")
class ISBI2012(torch.utils.data.Dataset):
    info = ISBI_INFO

    def __init__(self, root: str, split: str = "train") -> None:
        if not os.path.isdir(root):
            raise DataError(f"ISBI 2012 folder not found: {root} (give data_root)", argument="data_root")
        if split not in ISBI_SPLITS:
            raise DataError(f"isbi2012 has no '{split}' split; choose one of: {', '.join(ISBI_SPLITS)}")
        self.root = root
        self.split = split
        self.items = [
            (os.path.join(root, "image", f"{n}.png"), os.path.join(root, "label", f"{n}.png"))
            for n in ISBI_SPLITS[split]
        ]
        missing = [path for pair in self.items for path in pair if not os.path.isfile(path)]
        if missing:
            raise DataError(f"ISBI 2012 file not found: {missing[0]} ({len(missing)} missing in split '{split}')")

    def __len__(self) -> int:
        return len(self.items)

    def labels(self) -> Iterator[np.ndarray]:
        """Every label map of the split as class indices (for class weights); images are not read."""
        for _, mask_path in self.items:
            yield _classes(read_mask(mask_path), mask_path)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        image_path, mask_path = self.items[index]
        image = read_image(image_path)
        mask = _classes(read_mask(mask_path), mask_path)
        return image, check_pair(image, mask, num_classes=2, ignore_index=IGNORE_INDEX, mask_path=mask_path)


def _classes(source: np.ndarray, mask_path: str) -> np.ndarray:
    """Label PNG values -> classes: 0 (membrane) -> 0, 255 (cell) -> 1; anything else refused."""
    bad = np.setdiff1d(np.unique(source), (0, SOURCE_CELL))
    if bad.size:
        raise DataError(f"mask {mask_path} has values {bad.tolist()[:5]}; ISBI labels are 0 (membrane) or 255 (cell)")
    return (source == SOURCE_CELL).astype(np.uint8)
