"""PASCAL-Context (Mottaghi et al., CVPR 2014): every pixel of the PASCAL VOC 2010 train and
val images labelled, in the release its providers publish
(https://cs.stanford.edu/~roozbeh/pascal-context/):

    <root>/VOCdevkit/VOC2010/JPEGImages/<id>.jpg        VOC 2010 (VOCtrainval_03-May-2010.tar)
    <root>/VOCdevkit/VOC2010/ImageSets/Main/{train,val}.txt
                                                         VOC 2010's lists: 4,998 train, 5,105 val
    <root>/trainval/<id>.mat                             trainval.tar.gz: the variable LabelMap,
                                                         0 = unlabelled, k = line k of labels.txt
    <root>/labels.txt                                    "k: name", the 459 labels (trainval.tar.gz)

`trainval/` and `labels.txt` may also sit in `VOCdevkit/VOC2010/` (mmsegmentation's and
Detectron2's layout); `ImageSets/SegmentationContext/{train,val}.txt` (the same ids, written by
mmsegmentation's converter) are read when there, instead of `ImageSets/Main/`. `--data-root`
may point at the folder holding `VOCdevkit`, at `VOCdevkit` or at `VOC2010`.

Three label sets, each a dataset of its own:
- `pascal_context`: the papers' protocol, the 59 most frequent labels plus background (60
  classes; FCN Sec. 5 / Table 5, DeepLab v2 Sec. 4.2, RefineNet). The 59 labels are those of
  the Detail API (`detail.getMask`) that mmsegmentation's converter
  (tools/dataset_converters/pascal_context.py) maps to 1..59 in ascending label order, which
  is alphabetical; every other label and the unlabelled pixels are background, class 0, as
  in FCN's data layer (pascalcontext_layers.py: labels outside 59_labels.txt stay 0).
- `pascal_context_59`: the same 59 classes with background as void (mmsegmentation's
  pascal_context_59, `reduce_zero_label`): class k-1 for the k-th of the 59.
- `pascal_context_459`: every label of labels.txt, label k -> class k-1, unlabelled -> void;
  class names from the tree's labels.txt. Index 255 is void in atrous, so labels 256..459
  take classes 256..459 and class 255 is a placeholder that no pixel carries (460 outputs).

When labels.txt is present, the names of the 59 labels are checked against it (a release
numbered otherwise is an error, not a silent remapping). Splits: `train` (4,998) and `val`
(5,105, the split the papers score); VOC 2010's test images have no Context labels.
"""

from __future__ import annotations

import os

import numpy as np

from atrous.data.io import DataError
from atrous.data.matfiles import read_mat_labels, require_scipy
from atrous.data.meta import IGNORE_INDEX, DatasetInfo, default_palette
from atrous.data.pairs import PairedFiles, read_id_list, require_files, require_folder
from atrous.data.registry import register_dataset

# the 59 labels (their number in labels.txt) in ascending order, with their labels.txt names
CONTEXT_59 = (
    (2, "aeroplane"), (9, "bag"), (18, "bed"), (19, "bedclothes"), (22, "bench"), (23, "bicycle"),
    (25, "bird"), (31, "boat"), (33, "book"), (34, "bottle"), (44, "building"), (45, "bus"),
    (46, "cabinet"), (59, "car"), (65, "cat"), (68, "ceiling"), (72, "chair"), (80, "cloth"),
    (85, "computer"), (98, "cow"), (104, "cup"), (105, "curtain"), (113, "dog"), (115, "door"),
    (144, "fence"), (158, "floor"), (159, "flower"), (162, "food"), (187, "grass"), (189, "ground"),
    (207, "horse"), (220, "keyboard"), (232, "light"), (258, "motorbike"), (259, "mountain"),
    (260, "mouse"), (284, "person"), (295, "plate"), (296, "platform"), (308, "pottedplant"),
    (324, "road"), (326, "rock"), (347, "sheep"), (349, "shelves"), (354, "sidewalk"), (355, "sign"),
    (360, "sky"), (366, "snow"), (368, "sofa"), (397, "table"), (415, "track"), (416, "train"),
    (420, "tree"), (424, "truck"), (427, "tvmonitor"), (440, "wall"), (445, "water"), (454, "window"),
    (458, "wood"),
)
NUM_LABELS = 459  # labels.txt
CONTEXT_SPLITS = ("train", "val")
PASCAL_CONTEXT_INFO = DatasetInfo(name="pascal_context", class_names=("background",) + tuple(n for _, n in CONTEXT_59),
                                  palette=default_palette(60))
PASCAL_CONTEXT_59_INFO = DatasetInfo(name="pascal_context_59", class_names=tuple(n for _, n in CONTEXT_59),
                                     palette=default_palette(60)[1:])


def label_table(label_set: str) -> np.ndarray:
    """(460,) int64: the class of each LabelMap value 0..459 for `label_set` ("60", "59", "459")."""
    if label_set == "459":
        table = np.arange(-1, NUM_LABELS, dtype=np.int64)  # k -> k - 1
        table[IGNORE_INDEX + 1:] += 1  # 256.. -> 256..: class 255 stays the void index
        table[0] = IGNORE_INDEX
        return table
    background = 0 if label_set == "60" else IGNORE_INDEX
    table = np.full(NUM_LABELS + 1, background, np.int64)
    first = 1 if label_set == "60" else 0
    for index, (label, _) in enumerate(CONTEXT_59):
        table[label] = index + first
    return table


def find_voc2010(root: str, what: str, years: tuple[str, ...] = ("VOC2010",)) -> str:
    """The VOC folder: `root/VOCdevkit/VOC2010`, `root/VOC2010` or `root` itself (the first
    of `years` that holds JPEGImages/)."""
    require_folder(root, what)
    root = os.path.normpath(root)
    candidates = [os.path.join(root, "VOCdevkit", year) for year in years] + [os.path.join(root, y) for y in years]
    for candidate in candidates + [root]:
        if os.path.isdir(os.path.join(candidate, "JPEGImages")):
            return candidate
    raise DataError(f"PASCAL VOC {years[0][3:]} not found under {root}: expected "
                    f"{os.path.join(candidates[0], 'JPEGImages')} (or data_root at {years[0]})", argument="data_root")


def find_context(root: str, voc2010: str) -> str:
    """The folder holding PASCAL-Context's `trainval/`: --data-root, VOC2010 or the folders above it."""
    bases = dict.fromkeys(os.path.normpath(p) for p in (root, voc2010, os.path.dirname(voc2010),
                                                        os.path.dirname(os.path.dirname(voc2010))))
    for base in bases:
        if os.path.isdir(os.path.join(base, "trainval")):
            return base
    raise DataError(f"PASCAL-Context labels not found: expected {os.path.join(os.path.normpath(root), 'trainval')} "
                    "(unpack trainval.tar.gz of the PASCAL-Context release there)")


def context_split(voc2010: str, split: str) -> list[str]:
    """ImageSets/SegmentationContext/<split>.txt when there, else VOC 2010's ImageSets/Main/<split>.txt."""
    context = os.path.join(voc2010, "ImageSets", "SegmentationContext", f"{split}.txt")
    main = os.path.join(voc2010, "ImageSets", "Main", f"{split}.txt")
    return read_id_list(context if os.path.isfile(context) else main, "PASCAL-Context")


def read_label_names(path: str) -> dict[int, str]:
    """labels.txt: one "k: name" per line."""
    names = {}
    with open(path) as handle:
        for number, line in enumerate(handle, 1):
            if not line.strip():
                continue
            key, sep, name = line.partition(":")
            if not sep or not key.strip().isdigit():
                raise DataError(f"{path}:{number}: expected 'k: name', got '{line.strip()}'")
            names[int(key)] = name.strip()
    return names


def check_label_names(names: dict[int, str], path: str) -> None:
    for label, name in CONTEXT_59:
        if names.get(label) != name:
            raise DataError(f"{path}: label {label} is '{names.get(label)}', PASCAL-Context's is '{name}' "
                            "(a labels.txt of another release)")


class PascalContextBase(PairedFiles):
    label_set = "60"

    def __init__(self, root: str, split: str = "train") -> None:
        name = self.info.name
        if split not in CONTEXT_SPLITS:
            raise DataError(f"{name} has no '{split}' split; choose one of: {', '.join(CONTEXT_SPLITS)} "
                            "(VOC 2010's test images have no Context labels)")
        require_scipy(name)
        voc2010 = find_voc2010(root, "PASCAL-Context")
        context = find_context(root, voc2010)
        self.root, self.split = voc2010, split
        self.labels_txt = self._labels_txt(context, voc2010)
        self.table = label_table(self.label_set)
        self.items = [(os.path.join(voc2010, "JPEGImages", f"{i}.jpg"), os.path.join(context, "trainval", f"{i}.mat"))
                      for i in context_split(voc2010, split)]
        require_files((path for pair in self.items for path in pair), name)

    def _labels_txt(self, context: str, voc2010: str) -> str | None:
        """labels.txt beside trainval/ (or in VOC2010), its 59 names checked; None when absent."""
        for base in (context, voc2010):
            path = os.path.join(base, "labels.txt")
            if os.path.isfile(path):
                check_label_names(read_label_names(path), path)
                return path
        return None

    def read_label(self, path: str) -> np.ndarray:
        labels = read_mat_labels(path, "LabelMap", "PASCAL-Context")
        if labels.min() < 0 or labels.max() > NUM_LABELS:
            bad = np.unique(labels[(labels < 0) | (labels > NUM_LABELS)])
            raise DataError(f"PASCAL-Context label {path} has values {bad.tolist()[:5]} outside labels.txt's 0..459")
        return self.table[labels]


@register_dataset("pascal_context", root="pascal_context")  # holding VOCdevkit/ and trainval/
class PascalContext(PascalContextBase):
    """PASCAL-Context, 59 classes plus background (60): the papers' protocol."""

    info = PASCAL_CONTEXT_INFO
    label_set = "60"


@register_dataset("pascal_context_59", root="pascal_context")
class PascalContext59(PascalContextBase):
    """PASCAL-Context, the 59 classes, background void."""

    info = PASCAL_CONTEXT_59_INFO
    label_set = "59"


@register_dataset("pascal_context_459", root="pascal_context")
class PascalContext459(PascalContextBase):
    """PASCAL-Context, all 459 labels (names from the tree's labels.txt, which it needs)."""

    label_set = "459"

    def __init__(self, root: str, split: str = "train") -> None:
        self.info = DatasetInfo(name="pascal_context_459", class_names=("?",), palette=((0, 0, 0),))
        super().__init__(root, split)
        if self.labels_txt is None:
            raise DataError(f"pascal_context_459 takes its class names from labels.txt: none in "
                            f"{os.path.dirname(os.path.dirname(self.items[0][1]))} or {self.root}")
        self.info = full_label_info(read_label_names(self.labels_txt), self.labels_txt)


def full_label_info(names: dict[int, str], path: str) -> DatasetInfo:
    """460 classes: label k at class k - 1 (k <= 255) or k (k >= 256); class 255 unused (void)."""
    missing = [k for k in range(1, NUM_LABELS + 1) if k not in names]
    if missing:
        raise DataError(f"{path} lacks label {missing[0]} ({len(missing)} of 1..459 missing)")
    class_names = [names[k] for k in range(1, IGNORE_INDEX + 1)] + ["(void: unused index)"]
    class_names += [names[k] for k in range(IGNORE_INDEX + 1, NUM_LABELS + 1)]
    return DatasetInfo(name="pascal_context_459", class_names=tuple(class_names),
                       palette=default_palette(len(class_names)))
