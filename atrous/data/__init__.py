"""Datasets, class metadata and palettes, joint transforms, the synthetic scene generator."""

from __future__ import annotations

import os

import torch

from atrous.data.ade20k import ADE20K, ADE20K_INFO
from atrous.data.camvid import CAMVID_INFO, CamVid, median_frequency_weights
from atrous.data.cityscapes import CITYSCAPES_INFO, Cityscapes
from atrous.data.folder import FolderDataset
from atrous.data.io import DataError, ImageTooLarge, decode_image, read_image, read_mask
from atrous.data.isbi import ISBI2012, ISBI_INFO
from atrous.data.meta import IGNORE_INDEX, DatasetInfo, default_palette
from atrous.data.synthetic import SYNTHETIC_INFO, SyntheticScenes
from atrous.data.transforms import IMAGENET_MEAN, IMAGENET_STD, eval_transform, train_transform
from atrous.data.voc import VOC_AUG_INFO, VOC_INFO, VOCAug, VOCSegmentation

DATASETS = ("synthetic", "camvid", "folder", "isbi2012", "voc", "voc_aug", "cityscapes", "ade20k")
SHARED_DATA = os.path.join("..", "shared", "data")  # beside the project
DEFAULT_ROOTS = {  # where --data-root points when not given
    "camvid": os.path.join(SHARED_DATA, "camvid"),
    "isbi2012": os.path.join(SHARED_DATA, "isbi2012"),
    "voc": os.path.join(SHARED_DATA, "voc"),  # holding VOCdevkit/
    "voc_aug": os.path.join(SHARED_DATA, "voc"),  # holding VOCdevkit/ and benchmark_RELEASE/
    "cityscapes": os.path.join(SHARED_DATA, "cityscapes"),  # holding leftImg8bit/ and gtFine/
    "ade20k": os.path.join(SHARED_DATA, "ade20k"),  # holding ADEChallengeData2016/
}
# the datasets read from their native layout under a root folder
NATIVE = {"camvid": CamVid, "isbi2012": ISBI2012, "voc": VOCSegmentation, "voc_aug": VOCAug,
          "cityscapes": Cityscapes, "ade20k": ADE20K}


def build_dataset(
    name: str,
    split: str,
    *,
    data_root: str | None = None,
    num_classes: int | None = None,
    synthetic_size: int = 128,
    synthetic_length: int | None = None,
) -> torch.utils.data.Dataset:
    """A dataset by name; each has `.info` (a DatasetInfo)."""
    if name == "synthetic":
        return SyntheticScenes(split, size=synthetic_size, length=synthetic_length)
    if name == "folder":
        if data_root is None:
            raise DataError("--dataset folder needs --data-root DIR (with images/ and masks/)")
        return FolderDataset(data_root, split, num_classes=num_classes)
    if name in NATIVE:
        return NATIVE[name](data_root or DEFAULT_ROOTS[name], split)
    raise DataError(f"unknown dataset '{name}'; choose one of: {', '.join(DATASETS)}")


__all__ = [
    "ADE20K",
    "ADE20K_INFO",
    "CAMVID_INFO",
    "CITYSCAPES_INFO",
    "DATASETS",
    "IGNORE_INDEX",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "ISBI_INFO",
    "SYNTHETIC_INFO",
    "VOC_AUG_INFO",
    "VOC_INFO",
    "CamVid",
    "Cityscapes",
    "DataError",
    "DatasetInfo",
    "FolderDataset",
    "ISBI2012",
    "ImageTooLarge",
    "SyntheticScenes",
    "VOCAug",
    "VOCSegmentation",
    "build_dataset",
    "decode_image",
    "default_palette",
    "eval_transform",
    "median_frequency_weights",
    "read_image",
    "read_mask",
    "train_transform",
]
