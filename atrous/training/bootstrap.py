"""DeepLab v3's bootstrapping of hard images (Chen et al. 2017, Sec. 4.1, "Bootstrapping"):
the training images that contain one of the hard classes (on PASCAL VOC: bicycle, chair, table,
potted plant, sofa) are duplicated in the training set, so that an epoch sees them more often.

`atrous train --bootstrap-class bicycle --bootstrap-class chair [--bootstrap-copies 1]`; the
class weights (--class-weights) keep being computed on the split as it is."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from atrous.errors import UserError


def class_indices(classes: Sequence[str], names: Sequence[str]) -> list[int]:
    """Class names (or indices written as numbers) -> indices, with one-line errors."""
    indices = []
    for item in classes:
        if str(item).isdigit() and int(item) < len(names):
            indices.append(int(item))
        elif item in names:
            indices.append(list(names).index(item))
        else:
            raise UserError(f"bootstrap_class {item}: no such class; the dataset's classes: {', '.join(names)}",
                            argument="bootstrap_class")
    return indices


def hard_images(dataset: torch.utils.data.Dataset, classes: Sequence[int]) -> list[int]:
    """Indices of the items whose label map contains one of `classes`."""
    if not hasattr(dataset, "labels"):
        raise UserError("bootstrap_class needs label files to look into; this dataset has none", argument="bootstrap_class")
    wanted = np.asarray(classes)
    return [index for index, labels in enumerate(dataset.labels()) if np.isin(labels, wanted).any()]


class WithDuplicates(torch.utils.data.Dataset):
    """`dataset` followed by `copies` more of each item in `extra`."""

    def __init__(self, dataset: torch.utils.data.Dataset, extra: Sequence[int], copies: int = 1) -> None:
        self.dataset = dataset
        self.info = dataset.info
        self.items = list(range(len(dataset))) + list(extra) * copies

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int):
        return self.dataset[self.items[index]]
