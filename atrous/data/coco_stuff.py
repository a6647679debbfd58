"""COCO-Stuff 164k (Caesar, Uijlings, Ferrari, CVPR 2018): the COCO 2017 images with every
pixel labelled, 80 thing and 91 stuff classes, in the layout of its release
(github.com/nightrome/cocostuff: train2017.zip, val2017.zip, stuffthingmaps_trainval2017.zip):

    <root>/images/{train2017,val2017}/<12-digit id>.jpg
    <root>/annotations/{train2017,val2017}/<12-digit id>.png
        (stuffthingmaps_trainval2017.zip unpacked into annotations/, or left as
        <root>/stuffthingmaps_trainval2017/{train2017,val2017}/)

The label PNGs hold the 182 COCO-Stuff ids minus one (0 = person ... 90 = hair brush for the
things, 91 = banner ... 181 = wood for the stuff) and 255 = unlabelled. Eleven thing ids have
no annotation in COCO (street sign, hat, shoe, eye glasses, plate, mirror, window, desk, door,
blender, hair brush: values 11, 25, 28, 29, 44, 65, 67, 68, 70, 82, 90); they are void here,
and the 171 others are the classes in id order, as mmsegmentation's converter
(tools/dataset_converters/coco_stuff164k.py, `clsID_to_trID`) numbers them. A value of 182..254
is an error. Splits: `train` (118,287 images) and `val` (5,000), the split the papers
(DeepLab v3+ pre-trains on COCO; COCO-Stuff benchmarks) use. The class names are
mmsegmentation's (COCOStuffDataset).

Attention-to-Scale's COCO experiments use a subset of MS-COCO whose image list the paper does
not give, so that protocol is not offered.
"""

from __future__ import annotations

import os

import numpy as np

from atrous.data.io import DataError, read_mask
from atrous.data.meta import DatasetInfo, default_palette
from atrous.data.pairs import PairedFiles, jpeg_png_pairs, lookup_table, require_folder
from atrous.data.registry import register_dataset

UNUSED_THING_VALUES = (11, 25, 28, 29, 44, 65, 67, 68, 70, 82, 90)
NUM_SOURCE_VALUES = 182  # 0..181
COCO_STUFF_CLASSES = (
    "person", "bicycle", "car", "motorcycle", "airplane", "bus", "train", "truck", "boat", "traffic light",
    "fire hydrant", "stop sign", "parking meter", "bench", "bird", "cat", "dog", "horse", "sheep", "cow",
    "elephant", "bear", "zebra", "giraffe", "backpack", "umbrella", "handbag", "tie", "suitcase", "frisbee", "skis",
    "snowboard", "sports ball", "kite", "baseball bat", "baseball glove", "skateboard", "surfboard",
    "tennis racket", "bottle", "wine glass", "cup", "fork", "knife", "spoon", "bowl", "banana", "apple",
    "sandwich", "orange", "broccoli", "carrot", "hot dog", "pizza", "donut", "cake", "chair", "couch",
    "potted plant", "bed", "dining table", "toilet", "tv", "laptop", "mouse", "remote", "keyboard", "cell phone",
    "microwave", "oven", "toaster", "sink", "refrigerator", "book", "clock", "vase", "scissors", "teddy bear",
    "hair drier", "toothbrush", "banner", "blanket", "branch", "bridge", "building-other", "bush", "cabinet",
    "cage", "cardboard", "carpet", "ceiling-other", "ceiling-tile", "cloth", "clothes", "clouds", "counter",
    "cupboard", "curtain", "desk-stuff", "dirt", "door-stuff", "fence", "floor-marble", "floor-other",
    "floor-stone", "floor-tile", "floor-wood", "flower", "fog", "food-other", "fruit", "furniture-other", "grass",
    "gravel", "ground-other", "hill", "house", "leaves", "light", "mat", "metal", "mirror-stuff", "moss",
    "mountain", "mud", "napkin", "net", "paper", "pavement", "pillow", "plant-other", "plastic", "platform",
    "playingfield", "railing", "railroad", "river", "road", "rock", "roof", "rug", "salad", "sand", "sea", "shelf",
    "sky-other", "skyscraper", "snow", "solid-other", "stairs", "stone", "straw", "structural-other", "table",
    "tent", "textile-other", "towel", "tree", "vegetable", "wall-brick", "wall-concrete", "wall-other",
    "wall-panel", "wall-stone", "wall-tile", "wall-wood", "water-other", "waterdrops", "window-blind",
    "window-other", "wood",
)
COCO_STUFF_INFO = DatasetInfo(name="coco_stuff", class_names=COCO_STUFF_CLASSES, palette=default_palette(172)[1:])
USED_VALUES = tuple(v for v in range(NUM_SOURCE_VALUES) if v not in UNUSED_THING_VALUES)
VALUE_TO_CLASS = lookup_table((value, index) for index, value in enumerate(USED_VALUES))  # the rest -> 255
COCO_STUFF_SPLITS = {"train": "train2017", "val": "val2017"}
LABEL_FOLDERS = ("annotations", "stuffthingmaps_trainval2017")


def find_labels(root: str, folder: str) -> str:
    """annotations/<split>2017 or stuffthingmaps_trainval2017/<split>2017."""
    for base in LABEL_FOLDERS:
        candidate = os.path.join(root, base, folder)
        if os.path.isdir(candidate):
            return candidate
    raise DataError(f"COCO-Stuff labels not found: expected {os.path.join(root, LABEL_FOLDERS[0], folder)} "
                    "(unpack stuffthingmaps_trainval2017.zip into annotations/)")


@register_dataset("coco_stuff", root="coco_stuff")  # holding images/ and annotations/
class COCOStuff(PairedFiles):
    info = COCO_STUFF_INFO

    def __init__(self, root: str, split: str = "train") -> None:
        if split not in COCO_STUFF_SPLITS:
            raise DataError(f"coco_stuff has no '{split}' split; choose one of: train, val "
                            "(test-dev has no public labels)")
        folder = COCO_STUFF_SPLITS[split]
        require_folder(root, "COCO-Stuff")
        image_dir = os.path.join(root, "images", folder)
        require_folder(image_dir, "COCO-Stuff image", f"expected images/{folder}/ under data_root")
        label_dir = find_labels(root, folder)
        self.root, self.split = root, split
        self.items = jpeg_png_pairs(image_dir, label_dir, "COCO-Stuff label")

    def read_label(self, path: str) -> np.ndarray:
        values = read_mask(path)
        bad = (values >= NUM_SOURCE_VALUES) & (values != 255)
        if bad.any():
            raise DataError(f"mask {path} has values {np.unique(values[bad]).tolist()[:5]} outside COCO-Stuff's "
                            "0..181 and 255")
        return VALUE_TO_CLASS[values]
