"""SUN RGB-D (Song, Lichtenberg, Xiao, CVPR 2015): 10,335 RGB-D frames of indoor scenes from four
sensors, in the release of its providers (rgbd.cs.princeton.edu: SUNRGBD.zip and the toolbox
SUNRGBDtoolbox.zip) with its 37-class labels:

    <root>/SUNRGBD/<sensor>/.../<scene>/image/<name>.jpg
    <root>/SUNRGBD/<sensor>/.../<scene>/depth_bfx/<name>.png    in-painted depth, uint16 PNG
    <root>/SUNRGBDtoolbox/Metadata/SUNRGBDMeta.mat               per frame: sequenceName (the scene
                                                                 folder, "SUNRGBD/kv1/NYUdata/NYU0001"),
                                                                 rgbname, depthname
    <root>/SUNRGBDtoolbox/Metadata/SUNRGBD2Dseg.mat              MATLAB v7.3 (h5py): seglabel per frame,
                                                                 in SUNRGBDMeta's order, 0 = unlabelled,
                                                                 1..37 the classes
    <root>/SUNRGBDtoolbox/traintestSUNRGBD/allsplit.mat          alltrain (5,285 scene folders),
                                                                 alltest (5,050), as the authors'
                                                                 paths "/n/fs/sun3d/data/SUNRGBD/..."

Labels: class k - 1 for k in 1..37, 0 void (the 37 classes of the benchmark: SegNet, RefineNet).
Depth as the toolbox's read3dPoints.m decodes it: the PNG's 16 bits rotated right by 3, in
millimetres, so metres = ((v >> 3) | (v << 13) & 0xFFFF) / 1000, values above 8 m set to 8.
Splits: `train` (alltrain, 5,285) and `test` (alltest, 5,050; also asked for as `val`).

`sun_rgbd` gives float32 (4, H, W): R, G, B (0-255) and depth in metres, with per-band defaults
in `info.extra` (as nyudv2's); `sun_rgbd_rgb` the uint8 photographs alone.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import numpy as np
import torch

from atrous.data.io import DataError, check_pair, read_image, read_mask
from atrous.data.meta import IGNORE_INDEX, DatasetInfo, default_palette
from atrous.data.nyudv2 import RGBD_MEAN, RGBD_STD, rgbd_split
from atrous.data.registry import register_dataset

SUN_37_CLASSES = (
    "wall", "floor", "cabinet", "bed", "chair", "sofa", "table", "door", "window", "bookshelf", "picture",
    "counter", "blinds", "desk", "shelves", "curtain", "dresser", "pillow", "mirror", "floor_mat", "clothes",
    "ceiling", "books", "fridge", "tv", "paper", "towel", "shower_curtain", "box", "whiteboard", "person",
    "night_stand", "toilet", "sink", "lamp", "bathtub", "bag",
)
SUN_RGBD_INFO = DatasetInfo(name="sun_rgbd", class_names=SUN_37_CLASSES, palette=default_palette(38)[1:],
                            extra={"mean": RGBD_MEAN, "std": RGBD_STD, "bands": ("R", "G", "B", "depth (m)")})
SUN_RGBD_RGB_INFO = DatasetInfo(name="sun_rgbd_rgb", class_names=SUN_37_CLASSES, palette=default_palette(38)[1:])
SUN_RGBD_SPLITS = {"train": "alltrain", "test": "alltest", "val": "alltest"}
MAX_DEPTH_M = 8.0
META = os.path.join("SUNRGBDtoolbox", "Metadata", "SUNRGBDMeta.mat")
SEG = os.path.join("SUNRGBDtoolbox", "Metadata", "SUNRGBD2Dseg.mat")
SPLIT = os.path.join("SUNRGBDtoolbox", "traintestSUNRGBD", "allsplit.mat")


def decode_depth(raw: np.ndarray) -> np.ndarray:
    """read3dPoints.m: bitor(bitshift(v, -3), bitshift(v, 16 - 3)) / 1000, capped at 8 m."""
    values = raw.astype(np.uint32)
    millimetres = (values >> 3) | ((values << 13) & 0xFFFF)
    return np.minimum(millimetres.astype(np.float32) / 1000.0, MAX_DEPTH_M)


def scene_key(path: str) -> str:
    """'SUNRGBD/kv1/NYUdata/NYU0001' of '/n/fs/sun3d/data/SUNRGBD/kv1/NYUdata/NYU0001/' (or of itself)."""
    path = str(path).replace("\\", "/").rstrip("/")
    return path[path.index("SUNRGBD/"):] if "SUNRGBD/" in path else path


def read_frames(path: str) -> list[tuple[str, str, str]]:
    """SUNRGBDMeta.mat: (scene folder, image name, depth name) of every frame, in its order."""
    from scipy.io import loadmat

    if not os.path.isfile(path):
        raise DataError(f"SUN RGB-D file not found: {path} (unpack SUNRGBDtoolbox.zip into data_root)",
                        argument="data_root")
    try:
        meta = np.atleast_1d(loadmat(path, squeeze_me=True, struct_as_record=False)["SUNRGBDMeta"])
        return [(scene_key(m.sequenceName), str(m.rgbname), str(m.depthname)) for m in meta]
    except (KeyError, AttributeError) as err:
        raise DataError(f"{path} holds no SUNRGBDMeta with sequenceName, rgbname, depthname") from err
    except (ValueError, OSError, TypeError, NotImplementedError) as err:
        raise DataError(f"cannot read {path}: {err}") from err


def read_split(path: str, split: str) -> list[str]:
    """allsplit.mat's scene folders of `split`."""
    from scipy.io import loadmat

    if not os.path.isfile(path):
        raise DataError(f"SUN RGB-D split file not found: {path}")
    try:
        scenes = np.atleast_1d(loadmat(path, squeeze_me=True)[SUN_RGBD_SPLITS[split]])
    except KeyError as err:
        raise DataError(f"{path} holds no '{SUN_RGBD_SPLITS[split]}' list") from err
    return [scene_key(s) for s in scenes]


class SunRGBD(torch.utils.data.Dataset):
    """SUN RGB-D's frames of one split; `depth=True` adds the depth (m) as a fourth band."""

    def __init__(self, root: str, split: str = "train", depth: bool = True) -> None:
        self.root, self.depth = root, depth
        self.split = rgbd_split("sun_rgbd", root, split, "train (5,285), test (5,050)", "SUN RGB-D")
        self.info = SUN_RGBD_INFO if depth else SUN_RGBD_RGB_INFO
        frames = read_frames(os.path.join(root, META))
        index = {scene: n for n, (scene, _, _) in enumerate(frames)}
        self.seg_path = os.path.join(root, SEG)
        if not os.path.isfile(self.seg_path):
            raise DataError(f"SUN RGB-D file not found: {self.seg_path}")
        self.items = []  # (frame number in SUNRGBD2Dseg, image path, depth path)
        for scene in read_split(os.path.join(root, SPLIT), self.split):
            if scene not in index:
                raise DataError(f"{os.path.join(root, SPLIT)}: scene {scene} is not in {os.path.join(root, META)}")
            _, rgb, depth_name = frames[index[scene]]
            folder = os.path.join(root, *scene.split("/"))
            self.items.append((index[scene], os.path.join(folder, "image", rgb),
                               os.path.join(folder, "depth_bfx", depth_name)))
        missing = [p for _, image, depth_path in self.items for p in (image, depth_path) if not os.path.isfile(p)]
        if missing:
            raise DataError(f"SUN RGB-D file not found: {missing[0]} ({len(missing)} missing)")

    def __len__(self) -> int:
        return len(self.items)

    def read_label(self, frame: int) -> np.ndarray:
        """SUNRGBD2Dseg(frame).seglabel as classes (H, W): k -> k - 1, 0 -> void."""
        import h5py

        where = f"{self.seg_path} frame {frame + 1}"
        try:
            with h5py.File(self.seg_path, "r") as mat:
                labels = np.asarray(mat[mat["SUNRGBD2Dseg"]["seglabel"][frame, 0]]).T.astype(np.int64)
        except (OSError, KeyError, ValueError, IndexError) as err:
            raise DataError(f"cannot read {where}: {err}") from err
        if labels.min() < 0 or labels.max() > len(SUN_37_CLASSES):
            raise DataError(f"{where}: labels {np.unique(labels[(labels < 0) | (labels > 37)]).tolist()[:5]} "
                            "outside 0..37")
        return np.where(labels >= 1, labels - 1, IGNORE_INDEX)

    def labels(self) -> Iterator[np.ndarray]:
        """Every label map of the split, decoded (for class weights); images are not read."""
        for frame, _, _ in self.items:
            yield self.read_label(frame)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        frame, image_path, depth_path = self.items[index]
        image = read_image(image_path)
        if self.depth:
            depth = decode_depth(read_mask(depth_path))
            if depth.shape != tuple(image.shape[-2:]):
                raise DataError(f"depth {depth_path} is {depth.shape[1]}x{depth.shape[0]} but its image is "
                                f"{image.shape[-1]}x{image.shape[-2]}")
            image = torch.cat([image.float(), torch.from_numpy(depth)[None]])  # (4, H, W)
        return image, check_pair(image, self.read_label(frame), num_classes=len(SUN_37_CLASSES),
                                 ignore_index=IGNORE_INDEX, mask_path=f"{self.seg_path} frame {frame + 1}")


@register_dataset("sun_rgbd", root="sun_rgbd")  # holding SUNRGBD/ and SUNRGBDtoolbox/
def sun_rgbd(root: str, split: str = "train") -> SunRGBD:
    """SUN RGB-D, 37 classes, RGB-D: float32 (4, H, W), depth in metres."""
    return SunRGBD(root, split, depth=True)


@register_dataset("sun_rgbd_rgb", root="sun_rgbd")
def sun_rgbd_rgb(root: str, split: str = "train") -> SunRGBD:
    """SUN RGB-D, 37 classes, the colour images alone (uint8 (3, H, W))."""
    return SunRGBD(root, split, depth=False)
