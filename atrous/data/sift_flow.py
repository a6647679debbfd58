"""SIFT Flow (Liu, Yuen, Torralba, "Nonparametric Scene Parsing", CVPR 2009 / TPAMI 2011):
2,688 outdoor LabelMe images of 256 x 256 with 33 semantic and 3 geometric classes, in the
release of its authors (SiftFlowDataset.zip) with FCN's split lists:

    <root>/Images/spatial_envelope_256x256_static_8outdoorcategories/<id>.jpg
    <root>/SemanticLabels/spatial_envelope_256x256_static_8outdoorcategories/<id>.mat
        the variable S: 0 = unlabelled, k = the k-th of the 33 classes (alphabetical)
    <root>/GeoLabels/spatial_envelope_256x256_static_8outdoorcategories/<id>.mat
        the variable S: -1 or 0 = unlabelled, 1 sky, 2 horizontal, 3 vertical
    <root>/trainval.txt, <root>/test.txt     one id per line (FCN's data/sift-flow lists)

Labels as FCN's data layer reads them (siftflow_layers.py): class k - 1, unlabelled void.
Splits: `train` (trainval.txt, 2,488 images) and `test` (test.txt, 200; also asked for as
`val`), Liu et al.'s split, the one FCN (Sec. 5, Table 6) reports on.

Datasets: `sift_flow` (the 33 semantic classes) and `sift_flow_geometric` (the 3 geometric
classes), each trainable by `atrous train`. FCN's two-headed net learns both at once: from
Python, `SiftFlow(root, split, labels="both")` gives (image, mask (2, H, W)), plane 0
semantic and plane 1 geometric, for `create_model("fcn8s", 33, extra_heads={"geometric": 3})`
and `atrous.losses.multi_head.multi_head_loss`.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import numpy as np
import torch

from atrous.data.io import DataError, check_pair, read_image
from atrous.data.matfiles import read_mat_labels, require_scipy
from atrous.data.meta import IGNORE_INDEX, DatasetInfo, default_palette
from atrous.data.pairs import read_id_list, require_files, require_folder
from atrous.data.registry import register_dataset

SEMANTIC_CLASSES = (
    "awning", "balcony", "bird", "boat", "bridge", "building", "bus", "car", "cow", "crosswalk", "desert", "door",
    "fence", "field", "grass", "moon", "mountain", "person", "plant", "pole", "river", "road", "rock", "sand", "sea",
    "sidewalk", "sign", "sky", "staircase", "streetlight", "sun", "tree", "window",
)
GEOMETRIC_CLASSES = ("sky", "horizontal", "vertical")
SIFT_FLOW_INFO = DatasetInfo(name="sift_flow", class_names=SEMANTIC_CLASSES, palette=default_palette(34)[1:])
SIFT_FLOW_GEOMETRIC_INFO = DatasetInfo(name="sift_flow_geometric", class_names=GEOMETRIC_CLASSES,
                                       palette=((128, 128, 255), (128, 64, 0), (255, 128, 0)))
SUBFOLDER = "spatial_envelope_256x256_static_8outdoorcategories"
SIFT_FLOW_SPLITS = {"train": "trainval", "trainval": "trainval", "test": "test", "val": "test"}
LABEL_FOLDERS = {"semantic": "SemanticLabels", "geometric": "GeoLabels"}


def decode(labels: np.ndarray, num_classes: int, path: str, what: str) -> np.ndarray:
    """k -> k - 1 for k in 1..num_classes, 0 and -1 -> void (uint8 (H, W))."""
    bad = (labels < -1) | (labels > num_classes)
    if bad.any():
        raise DataError(f"SIFT Flow {what} label {path} has values {np.unique(labels[bad]).tolist()[:5]} "
                        f"outside -1..{num_classes}")
    return np.where(labels >= 1, labels - 1, IGNORE_INDEX).astype(np.uint8)


class SiftFlow(torch.utils.data.Dataset):
    """SIFT Flow with the semantic labels (`labels="semantic"`), the geometric ones
    ("geometric"), or both stacked as a (2, H, W) mask ("both", for the two-headed FCN)."""

    info = SIFT_FLOW_INFO

    def __init__(self, root: str, split: str = "train", labels: str = "semantic") -> None:
        if split not in SIFT_FLOW_SPLITS:
            raise DataError(f"sift_flow has no '{split}' split; choose one of: train (trainval.txt), test (test.txt)")
        if labels not in ("semantic", "geometric", "both"):
            raise DataError(f"sift_flow labels must be semantic, geometric or both, not '{labels}'")
        require_scipy("sift_flow")
        require_folder(root, "SIFT Flow")
        self.root, self.split, self.labels_kind = root, SIFT_FLOW_SPLITS[split], labels
        self.info = SIFT_FLOW_GEOMETRIC_INFO if labels == "geometric" else SIFT_FLOW_INFO
        self.ids = read_id_list(os.path.join(root, f"{self.split}.txt"), "SIFT Flow")
        kinds = ("semantic", "geometric") if labels == "both" else (labels,)
        self.items = [(self._path("Images", i, ".jpg"), *(self._path(LABEL_FOLDERS[k], i, ".mat") for k in kinds))
                      for i in self.ids]
        require_files((path for item in self.items for path in item), "SIFT Flow")

    def _path(self, folder: str, image_id: str, extension: str) -> str:
        return os.path.join(self.root, folder, SUBFOLDER, f"{image_id}{extension}")

    def read_semantic(self, path: str) -> np.ndarray:
        return decode(read_mat_labels(path, "S", "SIFT Flow"), len(SEMANTIC_CLASSES), path, "semantic")

    def read_geometric(self, path: str) -> np.ndarray:
        return decode(read_mat_labels(path, "S", "SIFT Flow"), len(GEOMETRIC_CLASSES), path, "geometric")

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        image_path, *label_paths = self.items[index]
        image = read_image(image_path)
        if self.labels_kind == "geometric":
            return image, self._checked(image, self.read_geometric(label_paths[0]), GEOMETRIC_CLASSES, label_paths[0])
        semantic = self._checked(image, self.read_semantic(label_paths[0]), SEMANTIC_CLASSES, label_paths[0])
        if self.labels_kind == "semantic":
            return image, semantic
        geometric = self._checked(image, self.read_geometric(label_paths[1]), GEOMETRIC_CLASSES, label_paths[1])
        return image, torch.stack([semantic, geometric])  # (2, H, W)

    @staticmethod
    def _checked(image: torch.Tensor, labels: np.ndarray, classes: tuple[str, ...], path: str) -> torch.Tensor:
        return check_pair(image, labels, num_classes=len(classes), ignore_index=IGNORE_INDEX, mask_path=path)

    def labels(self) -> Iterator[np.ndarray]:
        """Every label map of the split, decoded (for class weights): the first kind asked for."""
        read = self.read_geometric if self.labels_kind == "geometric" else self.read_semantic
        for _, path, *_ in self.items:
            yield read(path)


@register_dataset("sift_flow", root="sift_flow")  # holding Images/, SemanticLabels/, GeoLabels/, the lists
def sift_flow(root: str, split: str = "train") -> SiftFlow:
    """SIFT Flow's 33 semantic classes."""
    return SiftFlow(root, split, labels="semantic")


@register_dataset("sift_flow_geometric", root="sift_flow")
def sift_flow_geometric(root: str, split: str = "train") -> SiftFlow:
    """SIFT Flow's 3 geometric classes: sky, horizontal, vertical."""
    return SiftFlow(root, split, labels="geometric")


@register_dataset("sift_flow_both", root="sift_flow")
def sift_flow_both(root: str, split: str = "train") -> SiftFlow:
    """Both label maps as one (2, H, W) mask (semantic, geometric): the training set of FCN's
    two-headed net (`fcn8s` with `extra_heads={"geometric": 3}`; the trainer scores each head
    against its own plane)."""
    return SiftFlow(root, split, labels="both")
