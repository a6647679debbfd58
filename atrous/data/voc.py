"""PASCAL VOC 2012 segmentation (Everingham et al., IJCV 2015) and its SBD augmentation
(Hariharan et al., ICCV 2011), in their native layouts.

`voc`: `VOCdevkit/VOC2012/` with `JPEGImages/<id>.jpg`, `SegmentationClass/<id>.png`
(palette PNGs whose indices are the labels: 0 background, 1..20 the objects, 255 the void
band along object borders, kept as void) and `ImageSets/Segmentation/{train,val,trainval}.txt`.
`--data-root` may point at the folder holding `VOCdevkit`, at `VOCdevkit`, or at `VOC2012`.

`voc_aug`: the same VOC folder plus SBD's `benchmark_RELEASE/dataset/` (beside `VOCdevkit`,
or beside `VOC2012`): `cls/<id>.mat` (MATLAB files holding the struct `GTcls` whose
`Segmentation` field is the label map, 0..20, no void band), `img/<id>.jpg`, `train.txt`,
`val.txt`. Splits:
- `train_aug` (also asked for as `train`): SBD train + SBD val + VOC train, minus VOC val;
  10,582 images with the official files (8,498 + 2,857 SBD, 1,464 VOC train, 1,449 VOC val).
- `val`: VOC val (1,449 images), as in every paper that trains on train_aug.
Label source where an image has both: VOC's own PNG. It is the benchmark's annotation, drawn
with the same care and the same void band as the val labels the model is scored on; SBD's
labels (drawn by crowd workers, no void band) serve only the images VOC did not label.
Images come from `JPEGImages/` when there, else from SBD's `img/`.
"""

from __future__ import annotations

import os

import numpy as np

from atrous.data.io import DataError, read_mask
from atrous.data.meta import DatasetInfo, default_palette
from atrous.data.pairs import PairedFiles, read_id_list, require_files, require_folder
from atrous.data.registry import register_dataset

VOC_CLASSES = (
    "background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair",
    "cow", "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa",
    "train", "tvmonitor",
)
# VOC's colour map is the bit-interleaved one of its devkit (VOCcolormap.m)
VOC_INFO = DatasetInfo(name="voc", class_names=VOC_CLASSES, palette=default_palette(21))
VOC_AUG_INFO = DatasetInfo(name="voc_aug", class_names=VOC_CLASSES, palette=default_palette(21))
VOC_SPLITS = ("train", "val", "trainval")
VOC_AUG_SPLITS = ("train_aug", "val")


def find_voc2012(root: str) -> str:
    """The VOC2012 folder: `root/VOCdevkit/VOC2012`, `root/VOC2012` or `root` itself."""
    require_folder(root, "PASCAL VOC")
    root = os.path.normpath(root)
    for candidate in (os.path.join(root, "VOCdevkit", "VOC2012"), os.path.join(root, "VOC2012"), root):
        if os.path.isdir(os.path.join(candidate, "JPEGImages")):
            return candidate
    raise DataError(f"PASCAL VOC 2012 not found under {root}: expected "
                    f"{os.path.join(root, 'VOCdevkit', 'VOC2012', 'JPEGImages')} (or data_root at VOC2012)",
                    argument="data_root")


def find_sbd(root: str, voc2012: str) -> str:
    """SBD's `benchmark_RELEASE/dataset` beside VOCdevkit or VOC2012 (or inside --data-root)."""
    root, voc2012 = os.path.normpath(root), os.path.normpath(voc2012)
    bases = dict.fromkeys((root, os.path.dirname(voc2012), os.path.dirname(os.path.dirname(voc2012))))
    candidates = [os.path.join(base, "benchmark_RELEASE", "dataset") for base in bases]
    for candidate in candidates:
        if os.path.isdir(os.path.join(candidate, "cls")):
            return candidate
    raise DataError(f"SBD not found: expected {os.path.join(candidates[0], 'cls')} "
                    "(unpack benchmark.tgz beside VOCdevkit)")


def train_aug_ids(voc_train: list[str], voc_val: list[str], sbd_train: list[str],
                  sbd_val: list[str]) -> list[str]:
    """The train_aug image ids: (SBD train | SBD val | VOC train) - VOC val, sorted."""
    return sorted((set(sbd_train) | set(sbd_val) | set(voc_train)) - set(voc_val))


def read_sbd_label(path: str) -> np.ndarray:
    """SBD's `cls/<id>.mat`: the struct GTcls, field Segmentation, class indices (H, W)."""
    from scipy.io import loadmat
    from scipy.io.matlab import MatReadError

    if not os.path.isfile(path):
        raise DataError(f"SBD label not found: {path}")
    try:
        segmentation = np.asarray(loadmat(path, squeeze_me=True, struct_as_record=False)["GTcls"].Segmentation)
    except (KeyError, AttributeError) as err:
        raise DataError(f"SBD label {path} holds no GTcls.Segmentation") from err
    except (MatReadError, ValueError, OSError, TypeError) as err:
        raise DataError(f"cannot read SBD label {path}: {err}") from err
    if segmentation.ndim != 2 or segmentation.dtype.kind not in "ui" or segmentation.size == 0:
        raise DataError(f"SBD label {path}: GTcls.Segmentation is not a 2-D integer map")
    if segmentation.min() < 0 or segmentation.max() > 255:
        raise DataError(f"SBD label {path} has values outside 0..255")
    return segmentation.astype(np.uint8)


def _require_scipy() -> None:
    try:
        import scipy.io  # noqa: F401
    except ImportError as err:
        raise DataError("voc_aug reads SBD's .mat labels with scipy: pip install 'atrous[datasets]'") from err


def _voc_pairs(voc2012: str, ids: list[str]) -> list[tuple[str, str]]:
    return [(os.path.join(voc2012, "JPEGImages", f"{i}.jpg"), os.path.join(voc2012, "SegmentationClass", f"{i}.png"))
            for i in ids]


def _voc_split(voc2012: str, split: str) -> list[str]:
    return read_id_list(os.path.join(voc2012, "ImageSets", "Segmentation", f"{split}.txt"), "PASCAL VOC")


@register_dataset("voc", root="voc")  # holding VOCdevkit/
class VOCSegmentation(PairedFiles):
    info = VOC_INFO

    def __init__(self, root: str, split: str = "train") -> None:
        if split not in VOC_SPLITS:
            hint = "; VOC 2012 test labels are not public (its evaluation server scores test)" if split == "test" else ""
            raise DataError(f"voc has no '{split}' split; choose one of: {', '.join(VOC_SPLITS)}{hint}")
        self.root = find_voc2012(root)
        self.split = split
        self.items = _voc_pairs(self.root, _voc_split(self.root, split))
        require_files((path for pair in self.items for path in pair), "PASCAL VOC")

    def read_label(self, path: str) -> np.ndarray:
        return read_mask(path)


@register_dataset("voc_aug", root="voc")  # holding VOCdevkit/ and benchmark_RELEASE/
class VOCAug(PairedFiles):
    """VOC 2012 with SBD's extra labels: `train_aug` (10,582 images) and VOC `val`."""

    info = VOC_AUG_INFO

    def __init__(self, root: str, split: str = "train_aug") -> None:
        split = "train_aug" if split == "train" else split  # the training loop asks for "train"
        if split not in VOC_AUG_SPLITS:
            raise DataError(f"voc_aug has no '{split}' split; choose one of: {', '.join(VOC_AUG_SPLITS)} (or train)")
        voc2012 = find_voc2012(root)
        self.root, self.split = voc2012, split
        if split == "val":
            self.items = _voc_pairs(voc2012, _voc_split(voc2012, "val"))
        else:
            _require_scipy()
            sbd = find_sbd(root, voc2012)
            ids = train_aug_ids(_voc_split(voc2012, "train"), _voc_split(voc2012, "val"),
                                read_id_list(os.path.join(sbd, "train.txt"), "SBD"),
                                read_id_list(os.path.join(sbd, "val.txt"), "SBD"))
            self.items = [self._pair(voc2012, sbd, i) for i in ids]
        require_files((path for pair in self.items for path in pair), "voc_aug")

    @staticmethod
    def _pair(voc2012: str, sbd: str, image_id: str) -> tuple[str, str]:
        """VOC's image and PNG label where VOC has them, else SBD's."""
        image = os.path.join(voc2012, "JPEGImages", f"{image_id}.jpg")
        label = os.path.join(voc2012, "SegmentationClass", f"{image_id}.png")
        if not os.path.isfile(image):
            image = os.path.join(sbd, "img", f"{image_id}.jpg")
        if not os.path.isfile(label):
            label = os.path.join(sbd, "cls", f"{image_id}.mat")
        return image, label

    def read_label(self, path: str) -> np.ndarray:
        return read_sbd_label(path) if path.endswith(".mat") else read_mask(path)
