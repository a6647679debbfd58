"""Datasets, class metadata and palettes, joint transforms, the synthetic scene generator."""

from __future__ import annotations

import importlib
import pkgutil

from atrous.data.ade20k import ADE20K, ADE20K_INFO
from atrous.data.camvid import CAMVID_INFO, CamVid, median_frequency_weights
from atrous.data.cityscapes import CITYSCAPES_INFO, Cityscapes
from atrous.data.folder import FolderDataset
from atrous.data.io import DataError, ImageTooLarge, decode_image, read_image, read_mask
from atrous.data.isbi import ISBI2012, ISBI_INFO
from atrous.data.meta import IGNORE_INDEX, DatasetInfo, default_palette
from atrous.data.registry import (
    SHARED_DATA,
    build_dataset,
    default_root,
    list_datasets,
    register_dataset,
)
from atrous.data.synthetic import SYNTHETIC_INFO, SyntheticScenes
from atrous.data.transforms import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    eval_transform,
    normalise,
    train_transform,
)
from atrous.data.voc import VOC_AUG_INFO, VOC_INFO, VOCAug, VOCSegmentation

# every module of this package is imported, so that each dataset registers itself: a new
# dataset is a new file whose builder carries @register_dataset("name")
for _module in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_module.name}")

DATASETS = list_datasets()  # the built-in datasets; list_datasets() also holds those registered later


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
    "SHARED_DATA",
    "build_dataset",
    "default_root",
    "list_datasets",
    "register_dataset",
    "decode_image",
    "default_palette",
    "eval_transform",
    "median_frequency_weights",
    "normalise",
    "read_image",
    "read_mask",
    "train_transform",
]
