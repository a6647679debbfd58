"""NYU Depth v2 (Silberman, Hoiem, Kohli, Fergus, ECCV 2012), the 1,449 densely labelled
Kinect frames of indoor scenes, in the release of its providers with Gupta et al.'s 40 classes:

    <root>/nyu_depth_v2_labeled.mat   (cs.nyu.edu/~silberman/datasets/nyu_depth_v2.html; MATLAB
                                       v7.3 = HDF5, read with h5py) holding, per frame,
                                       images (3 x 640 x 480 uint8 as h5py sees MATLAB's
                                       480 x 640 x 3), depths (640 x 480, metres, in-painted)
                                       and labels (640 x 480, the 894 raw labels, 0 = unlabelled)
    <root>/splits.mat                 the standard split (same page): trainNdxs (795 frames),
                                       testNdxs (654), 1-based
    <root>/classMapping40.mat         Gupta, Arbelaez, Malik, CVPR 2013 (github.com/s-gupta/rcnn-depth,
                                       data/classMapping40.mat): mapClass, raw label k -> 1..40

The 40 classes are Gupta et al.'s, the set FCN (Sec. 5, Table 5: RGB, RGB-D, RGB-HHA) and
RefineNet report on: raw label k -> mapClass[k] - 1, raw 0 -> void. Splits `train` (795) and
`test` (654, also asked for as `val`).

Bands: `nyudv2` gives float32 (4, H, W): R, G, B as stored (0-255) and the depth in metres
(a fourth band for the multi-band models, `in_channels=4`); `nyudv2_rgb` the uint8 (3, H, W)
photographs alone; `nyudv2_hha` the depth encoded as HHA (Gupta et al., ECCV 2014; computed by
atrous.data.hha from the in-painted depth, the raw depth's holes left out of the normals, with
the NYU colour camera's intrinsics), uint8 (3, H, W) like a photograph, FCN's HHA input;
`nyudv2_rgbhha` both, float32 (6, H, W), all 0-255. HHA is computed at each read (about a
second a frame on a CPU). `info.extra["mean"]`, `info.extra["std"]`: per-band defaults, each
in its band's units: ImageNet's statistics times 255 for the colours; for depth 2.5 m and
1.0 m, for HHA 128 and 64: round figures rather than measurements (`atrous data stats`
measures a tree).
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import numpy as np
import torch

from atrous.data.hha import NYU_COLOR_CAMERA, hha
from atrous.data.io import DataError, check_pair
from atrous.data.matfiles import read_mat_labels, require_h5py, require_scipy
from atrous.data.meta import IGNORE_INDEX, DatasetInfo, default_palette
from atrous.data.pairs import require_folder
from atrous.data.registry import register_dataset

NYU_40_CLASSES = (
    "wall", "floor", "cabinet", "bed", "chair", "sofa", "table", "door", "window", "bookshelf", "picture",
    "counter", "blinds", "desk", "shelves", "curtain", "dresser", "pillow", "mirror", "floor mat", "clothes",
    "ceiling", "books", "refridgerator", "television", "paper", "towel", "shower curtain", "box", "whiteboard",
    "person", "night stand", "toilet", "sink", "lamp", "bathtub", "bag", "otherstructure", "otherfurniture",
    "otherprop",
)
RGBD_MEAN = (123.675, 116.28, 103.53, 2.5)  # R, G, B (0-255), depth (m)
RGBD_STD = (58.395, 57.12, 57.375, 1.0)
NYUDV2_INFO = DatasetInfo(name="nyudv2", class_names=NYU_40_CLASSES, palette=default_palette(41)[1:],
                          extra={"mean": RGBD_MEAN, "std": RGBD_STD, "bands": ("R", "G", "B", "depth (m)")})
NYUDV2_RGB_INFO = DatasetInfo(name="nyudv2_rgb", class_names=NYU_40_CLASSES, palette=default_palette(41)[1:])
NYUDV2_HHA_INFO = DatasetInfo(name="nyudv2_hha", class_names=NYU_40_CLASSES, palette=default_palette(41)[1:])
NYUDV2_RGBHHA_INFO = DatasetInfo(
    name="nyudv2_rgbhha", class_names=NYU_40_CLASSES, palette=default_palette(41)[1:],
    extra={"mean": RGBD_MEAN[:3] + (128.0,) * 3, "std": RGBD_STD[:3] + (64.0,) * 3,
           "bands": ("R", "G", "B", "disparity", "height", "angle")})
BAND_INFOS = {"rgbd": NYUDV2_INFO, "rgb": NYUDV2_RGB_INFO, "hha": NYUDV2_HHA_INFO, "rgbhha": NYUDV2_RGBHHA_INFO}
NYUDV2_SPLITS = {"train": "trainNdxs", "test": "testNdxs", "val": "testNdxs"}
LABELED_MAT = "nyu_depth_v2_labeled.mat"
NUM_RAW_LABELS = 894


def read_class_mapping(path: str) -> np.ndarray:
    """classMapping40.mat's mapClass as a (895,) table: raw label -> class (0..39), 0 -> void."""
    mapping = read_mat_labels(path, "mapClass", "NYUDv2 class mapping").ravel()
    if mapping.size != NUM_RAW_LABELS or mapping.min() < 0 or mapping.max() > len(NYU_40_CLASSES):
        raise DataError(f"{path}: mapClass must map the {NUM_RAW_LABELS} raw labels to 0..40, "
                        f"got {mapping.size} values in {mapping.min()}..{mapping.max()}")
    return np.concatenate([[IGNORE_INDEX], np.where(mapping >= 1, mapping - 1, IGNORE_INDEX)]).astype(np.int64)


def read_split(path: str, split: str) -> list[int]:
    """splits.mat's 1-based frame numbers of `split`, as 0-based indices."""
    frames = read_mat_labels(path, NYUDV2_SPLITS[split], "NYUDv2 split").ravel()
    return [int(f) - 1 for f in frames]


def rgbd_split(name: str, root: str, split: str, sizes: str, what: str) -> str:
    """The split read ("val" is the test set) of an RGB-D dataset, once the split name, the
    extras and the folder are checked (NYUDv2, SUN RGB-D)."""
    if split not in ("train", "test", "val"):
        raise DataError(f"{name} has no '{split}' split; choose one of: {sizes}")
    require_scipy(name)
    require_h5py(name)
    require_folder(root, what)
    return "test" if split == "val" else split


class NYUDv2(torch.utils.data.Dataset):
    """NYUDv2's labelled frames; `bands`: "rgbd" (the depth in metres as a fourth band), "rgb",
    "hha" or "rgbhha"."""

    def __init__(self, root: str, split: str = "train", bands: str = "rgbd") -> None:
        if bands not in BAND_INFOS:
            raise DataError(f"nyudv2 bands must be one of {', '.join(BAND_INFOS)}, not '{bands}'")
        self.root, self.bands = root, bands
        self.split = rgbd_split("nyudv2", root, split, "train (795), test (654)", "NYUDv2")
        self.info = BAND_INFOS[bands]
        self.path = os.path.join(root, LABELED_MAT)
        if not os.path.isfile(self.path):
            raise DataError(f"NYUDv2 file not found: {self.path} (the labelled dataset of the NYU Depth v2 page)")
        self.table = read_class_mapping(os.path.join(root, "classMapping40.mat"))
        self.frames = read_split(os.path.join(root, "splits.mat"), split)
        self.count = self._check_arrays()
        bad = [f + 1 for f in self.frames if not 0 <= f < self.count]
        if bad:
            raise DataError(f"{os.path.join(root, 'splits.mat')}: frame {bad[0]} is not among the "
                            f"{self.count} frames of {self.path}")

    def _open(self):
        import h5py

        try:
            return h5py.File(self.path, "r")
        except OSError as err:
            raise DataError(f"cannot read {self.path} (MATLAB v7.3 / HDF5 expected): {err}") from err

    def _check_arrays(self) -> int:
        """The frame count, after checking the three arrays' names and shapes against each other."""
        with self._open() as mat:
            missing = [key for key in ("images", "depths", "labels") if key not in mat]
            if missing:
                raise DataError(f"{self.path} holds no '{missing[0]}' array")
            images, depths, labels = mat["images"].shape, mat["depths"].shape, mat["labels"].shape
        if len(images) != 4 or images[1] != 3 or depths != (images[0], *images[2:]) or labels != depths:
            raise DataError(f"{self.path}: images {images}, depths {depths} and labels {labels} do not fit "
                            "(frames x 3 x W x H, frames x W x H)")
        return images[0]

    def __len__(self) -> int:
        return len(self.frames)

    def labels(self) -> Iterator[np.ndarray]:
        """Every label map of the split, decoded (for class weights); images are not read."""
        with self._open() as mat:
            for frame in self.frames:
                yield self.decode(np.asarray(mat["labels"][frame]).T, frame)

    def decode(self, raw: np.ndarray, frame: int) -> np.ndarray:
        """The raw labels of `frame` (H, W) as the 40 classes, 255 void."""
        raw = raw.astype(np.int64)
        if raw.min() < 0 or raw.max() > NUM_RAW_LABELS:
            raise DataError(f"{self.path} frame {frame + 1}: labels "
                            f"{np.unique(raw[(raw < 0) | (raw > NUM_RAW_LABELS)]).tolist()[:5]} "
                            f"outside the raw 0..{NUM_RAW_LABELS}")
        return self.table[raw]

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        frame = self.frames[index]
        with self._open() as mat:  # MATLAB's column-major arrays: (W, H) in h5py, transposed here
            rgb = np.asarray(mat["images"][frame]).transpose(0, 2, 1)  # (3, H, W) uint8
            depth = np.asarray(mat["depths"][frame], dtype=np.float32).T  # (H, W) metres
            raw_depth = np.asarray(mat["rawDepths"][frame]).T if "rawDepths" in mat else depth
            labels = self.decode(np.asarray(mat["labels"][frame]).T, frame)  # (H, W) from the raw 0..894
        where = f"{self.path} frame {frame + 1}"
        if not np.isfinite(depth).all():
            raise DataError(f"{where}: the depth holds NaN or infinite values")
        image = self._bands(torch.from_numpy(np.ascontiguousarray(rgb, dtype=np.uint8)), depth, raw_depth <= 0)
        return image, check_pair(image, labels, num_classes=len(NYU_40_CLASSES),
                                 ignore_index=IGNORE_INDEX, mask_path=where)


    def _bands(self, rgb: torch.Tensor, depth: np.ndarray, missing: np.ndarray) -> torch.Tensor:
        """The image of `self.bands` from uint8 RGB (3, H, W) and the depth (H, W) in metres."""
        if self.bands == "rgb":
            return rgb
        if self.bands == "rgbd":
            return torch.cat([rgb.float(), torch.from_numpy(np.ascontiguousarray(depth))[None]])  # (4, H, W)
        encoded = torch.from_numpy(hha(depth, NYU_COLOR_CAMERA, missing))  # uint8 (3, H, W)
        return encoded if self.bands == "hha" else torch.cat([rgb, encoded]).float()  # (6, H, W)


@register_dataset("nyudv2", root="nyudv2")  # holding nyu_depth_v2_labeled.mat, splits.mat, classMapping40.mat
def nyudv2(root: str, split: str = "train") -> NYUDv2:
    """NYUDv2, 40 classes, RGB-D: float32 (4, H, W), depth in metres."""
    return NYUDv2(root, split, bands="rgbd")


@register_dataset("nyudv2_rgb", root="nyudv2")
def nyudv2_rgb(root: str, split: str = "train") -> NYUDv2:
    """NYUDv2, 40 classes, the colour images alone (uint8 (3, H, W))."""
    return NYUDv2(root, split, bands="rgb")


@register_dataset("nyudv2_hha", root="nyudv2")
def nyudv2_hha(root: str, split: str = "train") -> NYUDv2:
    """NYUDv2, 40 classes, the depth as HHA: uint8 (3, H, W)."""
    return NYUDv2(root, split, bands="hha")


@register_dataset("nyudv2_rgbhha", root="nyudv2")
def nyudv2_rgbhha(root: str, split: str = "train") -> NYUDv2:
    """NYUDv2, 40 classes, RGB and HHA: float32 (6, H, W), 0-255."""
    return NYUDv2(root, split, bands="rgbhha")
