"""CamVid in the SegNet layout (Brostow et al. 2008; Badrinarayanan et al., TPAMI 2017).

`<root>/{train,val,test}.txt` list `image label` relative paths; labels are 8-bit class
indices 0..10 with 11 = Unlabelled, which becomes the void label 255.

The SegNet val split (101 frames of sequence 0016E5) shares its sequence with 204 training
frames, so val scores near-duplicates of what the model saw. The sequence-held-out protocol
(docs/benchmarks.md) holds a whole sequence out instead; frames carry their sequence in the
file name (0001TP, 0006R0, 0016E5, Seq05VD):
- `seq_train`: the train.txt frames of every sequence but 0006R0 (0001TP and 0016E5, 266);
- `seq_test`: the train.txt frames of 0006R0 (101), a sequence neither seq_train nor val holds.
A model trained on seq_train is scored on both val and seq_test from one run.
For a model to hand out, trained on every labelled frame:
- `trainval`: train.txt and val.txt, all three sequences (468);
- `seq_trainval`: the same without 0006R0 (367), the recipe's held-out check.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import numpy as np
import torch

from atrous.data import weights
from atrous.data.io import DataError, check_pair, read_image, read_mask
from atrous.data.meta import IGNORE_INDEX, DatasetInfo
from atrous.data.registry import register_dataset

CAMVID_INFO = DatasetInfo(
    name="camvid",
    class_names=(
        "Sky", "Building", "Pole", "Road", "Pavement", "Tree",
        "SignSymbol", "Fence", "Car", "Pedestrian", "Bicyclist",
    ),
    palette=(
        (128, 128, 128), (128, 0, 0), (192, 192, 128), (128, 64, 128), (60, 40, 222),
        (128, 128, 0), (192, 128, 128), (64, 64, 128), (64, 0, 128), (64, 64, 0), (0, 128, 192),
    ),
)
CAMVID_VOID = 11
HELD_OUT_SEQUENCE = "0006R0"
# split -> (listing files, keep a frame of sequence s?)
SEQUENCE_SPLITS = {
    "seq_train": (("train",), lambda sequence: sequence != HELD_OUT_SEQUENCE),
    "seq_test": (("train",), lambda sequence: sequence == HELD_OUT_SEQUENCE),
    "trainval": (("train", "val"), None),
    "seq_trainval": (("train", "val"), lambda sequence: sequence != HELD_OUT_SEQUENCE),
}


def sequence_of(path: str) -> str:
    """'0006R0' for '.../0006R0_f02400.png': CamVid names frames <sequence>_<frame>."""
    return os.path.basename(path).split("_", 1)[0]


@register_dataset("camvid", root="camvid")
class CamVid(torch.utils.data.Dataset):
    info = CAMVID_INFO

    def __init__(self, root: str, split: str = "train") -> None:
        sources, keep = SEQUENCE_SPLITS.get(split, ((split,), None))
        listings = [os.path.join(root, f"{source}.txt") for source in sources]
        if not os.path.isdir(root):
            raise DataError(f"CamVid folder not found: {root} (give data_root)", argument="data_root")
        for listing in listings:
            if not os.path.isfile(listing):
                raise DataError(f"CamVid split file not found: {listing}")
        self.root = root
        self.split = split
        self.items = [item for listing in listings for item in _read_listing(listing, root)]
        if keep is not None:
            self.items = [item for item in self.items if keep(sequence_of(item[0]))]
            if not self.items:
                raise DataError(f"CamVid split '{split}': no frame of {', '.join(listings)} fits it "
                                f"(the held-out sequence is {HELD_OUT_SEQUENCE})")

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        image_path, mask_path = self.items[index]
        image = read_image(image_path)
        mask = read_mask(mask_path).copy()
        mask[mask == CAMVID_VOID] = IGNORE_INDEX
        return image, check_pair(image, mask, num_classes=11, ignore_index=IGNORE_INDEX, mask_path=mask_path)

    mask_void = CAMVID_VOID  # the void value in the label files mask_paths() lists

    def mask_paths(self) -> list[str]:
        return [mask for _, mask in self.items]

    def labels(self) -> Iterator[np.ndarray]:
        """Every label map of the split with void as 255 (for class weights); images are not read."""
        for path in self.mask_paths():
            mask = read_mask(path)
            yield np.where(mask == CAMVID_VOID, IGNORE_INDEX, mask).astype(np.uint8)


def _read_listing(listing: str, root: str) -> list[tuple[str, str]]:
    items = []
    with open(listing) as handle:
        for number, line in enumerate(handle, 1):
            parts = line.split()
            if not parts:
                continue
            if len(parts) != 2:
                raise DataError(f"{listing}:{number}: expected 'image label', got '{line.strip()}'")
            # the original SegNet listings hold absolute '/SegNet/CamVid/...' paths
            image, label = (os.path.join(root, *p.split("/")[-2:]) for p in parts)
            items.append((image, label))
    if not items:
        raise DataError(f"CamVid split file is empty: {listing}")
    return items


def median_frequency_weights(mask_paths: list[str], num_classes: int, void: int = CAMVID_VOID) -> torch.Tensor:
    """SegNet's class balancing on raw CamVid label files (void = 11): see atrous.data.weights."""
    return weights.median_frequency_weights(mask_paths, num_classes, void)
