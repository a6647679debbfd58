"""Datasets, class metadata and palettes, joint transforms, the synthetic scene generator."""

from __future__ import annotations

import os

import torch

from atrous.data.camvid import CAMVID_INFO, CamVid, median_frequency_weights
from atrous.data.folder import FolderDataset
from atrous.data.io import DataError, ImageTooLarge, decode_image, read_image, read_mask
from atrous.data.isbi import ISBI2012, ISBI_INFO
from atrous.data.meta import IGNORE_INDEX, DatasetInfo, default_palette
from atrous.data.synthetic import SYNTHETIC_INFO, SyntheticScenes
from atrous.data.transforms import IMAGENET_MEAN, IMAGENET_STD, eval_transform, train_transform

DATASETS = ("synthetic", "camvid", "folder", "isbi2012")
DEFAULT_ROOTS = {
    "camvid": os.path.join("..", "shared", "data", "camvid"),
    "isbi2012": os.path.join("..", "shared", "data", "isbi2012"),
}


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
    if name == "camvid":
        return CamVid(data_root or DEFAULT_ROOTS["camvid"], split)
    if name == "folder":
        if data_root is None:
            raise DataError("--dataset folder needs --data-root DIR (with images/ and masks/)")
        return FolderDataset(data_root, split, num_classes=num_classes)
    if name == "isbi2012":
        return ISBI2012(data_root or DEFAULT_ROOTS["isbi2012"], split)
    raise DataError(f"unknown dataset '{name}'; choose one of: {', '.join(DATASETS)}")


__all__ = [
    "CAMVID_INFO",
    "DATASETS",
    "IGNORE_INDEX",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "ISBI_INFO",
    "SYNTHETIC_INFO",
    "CamVid",
    "DataError",
    "DatasetInfo",
    "FolderDataset",
    "ISBI2012",
    "ImageTooLarge",
    "SyntheticScenes",
    "build_dataset",
    "decode_image",
    "default_palette",
    "eval_transform",
    "median_frequency_weights",
    "read_image",
    "read_mask",
    "train_transform",
]
