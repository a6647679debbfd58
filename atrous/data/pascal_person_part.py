"""PASCAL-Person-Part (Chen et al., "Detect What You Can", CVPR 2014; the part labels of
PASCAL-Part merged into six person parts), in the release of DeepLab's authors
(pascal_person_part.zip, liangchiehchen.com/projects/DeepLab.html), with the VOC images:

    <root>/VOCdevkit/VOC2010/JPEGImages/<id>.jpg             VOC 2010 (VOC2012's JPEGImages holds them too)
    <root>/pascal_person_part/pascal_person_part_gt/<id>.png  labels: 0 background, 1 head, 2 torso,
                                                              3 upper arms, 4 lower arms, 5 upper legs,
                                                              6 lower legs (255, where present: void)
    <root>/pascal_person_part/pascal_person_part_trainval_list/
        train.txt, val.txt          "/JPEGImages/<id>.jpg /SegmentationPart/<id>.png" per line
        train_id.txt, val_id.txt    "<id>" per line (read first when there)

`pascal_person_part/` may also be `--data-root` itself, or sit beside `VOCdevkit`. Splits:
`train` (1,716 images) and `val` (1,817), which the papers (Attention-to-Scale, Chen et al.
CVPR 2016, Sec. 4.2; DeepLab v2, TPAMI 2018, Sec. 4.4; RefineNet) call the test set;
`test` is read as `val`. Only images with at least one person are in the lists.
"""

from __future__ import annotations

import os

import numpy as np

from atrous.data.io import DataError, read_mask
from atrous.data.meta import DatasetInfo, default_palette
from atrous.data.pairs import PairedFiles, read_id_list, require_files
from atrous.data.pascal_context import find_voc2010
from atrous.data.registry import register_dataset

PERSON_PART_INFO = DatasetInfo(
    name="pascal_person_part",
    class_names=("background", "head", "torso", "upper arms", "lower arms", "upper legs", "lower legs"),
    palette=default_palette(7),
)
PERSON_PART_SPLITS = {"train": "train", "val": "val", "test": "val"}
RELEASE_FOLDER = "pascal_person_part"


def find_release(root: str, voc: str) -> str:
    """The unpacked `pascal_person_part/` (holding pascal_person_part_gt/): in --data-root,
    --data-root itself, or beside VOCdevkit."""
    root = os.path.normpath(root)
    above_voc = os.path.dirname(os.path.dirname(os.path.normpath(voc)))
    candidates = dict.fromkeys((os.path.join(root, RELEASE_FOLDER), root, os.path.join(above_voc, RELEASE_FOLDER)))
    for candidate in candidates:
        if os.path.isdir(os.path.join(candidate, "pascal_person_part_gt")):
            return candidate
    raise DataError(f"PASCAL-Person-Part labels not found: expected "
                    f"{os.path.join(root, RELEASE_FOLDER, 'pascal_person_part_gt')} (unpack pascal_person_part.zip there)")


def person_part_ids(lists: str, split: str) -> list[str]:
    """The ids of `split`: <split>_id.txt, else the image names of <split>.txt."""
    ids_file = os.path.join(lists, f"{split}_id.txt")
    if os.path.isfile(ids_file):
        return read_id_list(ids_file, "PASCAL-Person-Part")
    paths = read_id_list(os.path.join(lists, f"{split}.txt"), "PASCAL-Person-Part")  # first column
    return [os.path.splitext(os.path.basename(path))[0] for path in paths]


@register_dataset("pascal_person_part", root="pascal_person_part")  # holding VOCdevkit/ and pascal_person_part/
class PascalPersonPart(PairedFiles):
    info = PERSON_PART_INFO

    def __init__(self, root: str, split: str = "train") -> None:
        if split not in PERSON_PART_SPLITS:
            raise DataError(f"pascal_person_part has no '{split}' split; choose one of: train, val (= test)")
        release_root = os.path.isdir(os.path.join(root, "pascal_person_part_gt"))  # the VOC images beside it
        voc = find_voc2010(os.path.dirname(os.path.normpath(root)) if release_root else root, "PASCAL-Person-Part",
                           years=("VOC2010", "VOC2012"))
        release = find_release(root, voc)
        self.root, self.split = release, PERSON_PART_SPLITS[split]
        ids = person_part_ids(os.path.join(release, "pascal_person_part_trainval_list"), self.split)
        self.items = [(os.path.join(voc, "JPEGImages", f"{i}.jpg"),
                       os.path.join(release, "pascal_person_part_gt", f"{i}.png")) for i in ids]
        require_files((path for pair in self.items for path in pair), "PASCAL-Person-Part")

    def read_label(self, path: str) -> np.ndarray:
        return read_mask(path)  # 0..6 and 255 already; check_pair refuses any other value
