"""Cityscapes (Cordts et al., CVPR 2016), fine annotations, in the native layout:

    <root>/leftImg8bit/{train,val,test}/<city>/<city>_<seq>_<frame>_leftImg8bit.png
    <root>/gtFine/{train,val,test}/<city>/<city>_<seq>_<frame>_gtFine_labelIds.png

Label files hold the 34 `labelId`s of the official table (cityscapesScripts,
`helpers/labels.py`); they are mapped to the 19 evaluation classes by its `trainId` column,
every other id (void, ignored-in-eval classes such as parking, guard rail, caravan) to 255.
Class names and colours are the official ones. The `test` split's label files hold no
annotation (the benchmark server scores test), so asking for it is an error.
"""

from __future__ import annotations

import os
from typing import NamedTuple

import numpy as np

from atrous.data.io import DataError, read_mask
from atrous.data.meta import IGNORE_INDEX, DatasetInfo
from atrous.data.pairs import PairedFiles, lookup_table, require_folder
from atrous.data.registry import register_dataset


class CityscapesLabel(NamedTuple):
    name: str
    label_id: int  # the value in *_gtFine_labelIds.png
    train_id: int  # the training index; 255 = void
    color: tuple[int, int, int]


# cityscapesScripts' labels.py: name, id, trainId, color (license plate, id -1, is never drawn)
CITYSCAPES_LABELS = (
    CityscapesLabel("unlabeled", 0, 255, (0, 0, 0)),
    CityscapesLabel("ego vehicle", 1, 255, (0, 0, 0)),
    CityscapesLabel("rectification border", 2, 255, (0, 0, 0)),
    CityscapesLabel("out of roi", 3, 255, (0, 0, 0)),
    CityscapesLabel("static", 4, 255, (0, 0, 0)),
    CityscapesLabel("dynamic", 5, 255, (111, 74, 0)),
    CityscapesLabel("ground", 6, 255, (81, 0, 81)),
    CityscapesLabel("road", 7, 0, (128, 64, 128)),
    CityscapesLabel("sidewalk", 8, 1, (244, 35, 232)),
    CityscapesLabel("parking", 9, 255, (250, 170, 160)),
    CityscapesLabel("rail track", 10, 255, (230, 150, 140)),
    CityscapesLabel("building", 11, 2, (70, 70, 70)),
    CityscapesLabel("wall", 12, 3, (102, 102, 156)),
    CityscapesLabel("fence", 13, 4, (190, 153, 153)),
    CityscapesLabel("guard rail", 14, 255, (180, 165, 180)),
    CityscapesLabel("bridge", 15, 255, (150, 100, 100)),
    CityscapesLabel("tunnel", 16, 255, (150, 120, 90)),
    CityscapesLabel("pole", 17, 5, (153, 153, 153)),
    CityscapesLabel("polegroup", 18, 255, (153, 153, 153)),
    CityscapesLabel("traffic light", 19, 6, (250, 170, 30)),
    CityscapesLabel("traffic sign", 20, 7, (220, 220, 0)),
    CityscapesLabel("vegetation", 21, 8, (107, 142, 35)),
    CityscapesLabel("terrain", 22, 9, (152, 251, 152)),
    CityscapesLabel("sky", 23, 10, (70, 130, 180)),
    CityscapesLabel("person", 24, 11, (220, 20, 60)),
    CityscapesLabel("rider", 25, 12, (255, 0, 0)),
    CityscapesLabel("car", 26, 13, (0, 0, 142)),
    CityscapesLabel("truck", 27, 14, (0, 0, 70)),
    CityscapesLabel("bus", 28, 15, (0, 60, 100)),
    CityscapesLabel("caravan", 29, 255, (0, 0, 90)),
    CityscapesLabel("trailer", 30, 255, (0, 0, 110)),
    CityscapesLabel("train", 31, 16, (0, 80, 100)),
    CityscapesLabel("motorcycle", 32, 17, (0, 0, 230)),
    CityscapesLabel("bicycle", 33, 18, (119, 11, 32)),
    CityscapesLabel("license plate", -1, -1, (0, 0, 142)),
)
MAX_LABEL_ID = 33
_TRAIN_LABELS = sorted((label for label in CITYSCAPES_LABELS if 0 <= label.train_id < IGNORE_INDEX),
                       key=lambda label: label.train_id)
CITYSCAPES_INFO = DatasetInfo(
    name="cityscapes",
    class_names=tuple(label.name for label in _TRAIN_LABELS),
    palette=tuple(label.color for label in _TRAIN_LABELS),
)
# labelId -> trainId, everything else (void, ids the benchmark ignores, ids > 33) -> 255
LABEL_ID_TO_TRAIN_ID = lookup_table((label.label_id, label.train_id) for label in CITYSCAPES_LABELS
                                    if label.label_id >= 0)
CITYSCAPES_SPLITS = ("train", "val")
IMAGE_SUFFIX = "_leftImg8bit.png"
LABEL_SUFFIX = "_gtFine_labelIds.png"


@register_dataset("cityscapes", root="cityscapes")  # holding leftImg8bit/ and gtFine/
class Cityscapes(PairedFiles):
    info = CITYSCAPES_INFO

    def __init__(self, root: str, split: str = "train") -> None:
        if split not in CITYSCAPES_SPLITS:
            hint = ("; its labels are not public (the benchmark server scores test): run `atrous predict` on "
                    "leftImg8bit/test/*/*.png instead") if split == "test" else ""
            raise DataError(f"cityscapes has no '{split}' split; choose one of: {', '.join(CITYSCAPES_SPLITS)}{hint}")
        require_folder(root, "Cityscapes")
        self.root, self.split = root, split
        self.items = _pairs(os.path.join(root, "leftImg8bit", split), os.path.join(root, "gtFine", split))

    def read_label(self, path: str) -> np.ndarray:
        label_ids = read_mask(path)
        if label_ids.size and label_ids.max() > MAX_LABEL_ID:
            bad = np.unique(label_ids[label_ids > MAX_LABEL_ID])
            raise DataError(f"mask {path} has values {bad.tolist()[:5]} that are no Cityscapes labelId "
                            f"(0..{MAX_LABEL_ID}); use the *{LABEL_SUFFIX} files")
        return LABEL_ID_TO_TRAIN_ID[label_ids]


def _pairs(image_root: str, label_root: str) -> list[tuple[str, str]]:
    """Every <city>/*_leftImg8bit.png under image_root with its labelIds file, sorted."""
    require_folder(image_root, "Cityscapes image", "expected leftImg8bit/<split>/<city>/ under data_root")
    require_folder(label_root, "Cityscapes label", "expected gtFine/<split>/<city>/ under data_root")
    items = []
    for city in sorted(os.listdir(image_root)):
        city_dir = os.path.join(image_root, city)
        if not os.path.isdir(city_dir):
            continue
        for name in sorted(os.listdir(city_dir)):
            if name.endswith(IMAGE_SUFFIX):
                label = os.path.join(label_root, city, name[: -len(IMAGE_SUFFIX)] + LABEL_SUFFIX)
                if not os.path.isfile(label):
                    raise DataError(f"Cityscapes image {os.path.join(city_dir, name)} has no label file {label}")
                items.append((os.path.join(city_dir, name), label))
    if not items:
        raise DataError(f"no *{IMAGE_SUFFIX} images in {image_root}/<city>/")
    return items
