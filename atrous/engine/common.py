"""What train, evaluate and predict share: devices, precision, normalisation, batching."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import torch

from atrous.data import IMAGENET_MEAN, IMAGENET_STD, DatasetInfo
from atrous.engine.errors import UserError

PRECISIONS = ("fp32", "bf16", "fp16")


def read_mapping_file(path: str, option: str) -> dict[str, Any]:
    """A YAML (or JSON) file holding a mapping, with one-line errors naming `option`."""
    import os

    import yaml

    if not os.path.isfile(path):
        raise UserError(f"{option} file not found: {path}")
    try:
        with open(path) as handle:
            data = yaml.safe_load(handle) or {}
    except yaml.YAMLError as err:
        raise UserError(f"{option} {path} is not valid YAML/JSON: {str(err).splitlines()[0]}") from err
    if not isinstance(data, dict):
        raise UserError(f"{option} {path} must hold a mapping of name: value")
    return data


def resolve_device(device: str | None) -> torch.device:
    if device in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except RuntimeError as err:
        raise UserError(f"--device {device}: {err}") from err
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"--device {device}: CUDA is not available on this machine")
    return resolved


@contextlib.contextmanager
def eval_mode(model: torch.nn.Module) -> Iterator[None]:
    """Evaluation mode for the duration; every submodule's own mode restored afterwards
    (the training loop evaluates its model between steps)."""
    modes = [(module, module.training) for module in model.modules()]
    model.eval()
    try:
        yield
    finally:
        for module, mode in modes:
            module.training = mode


def autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    """bf16 or fp16 autocast on CPU or GPU when asked; fp32 otherwise. (fp16 is for GPUs, with
    a gradient scaler in training; it runs on a CPU too, slowly.)"""
    if precision not in PRECISIONS:
        raise UserError(f"--precision must be one of {PRECISIONS}, got '{precision}'")
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=torch.bfloat16 if precision == "bf16" else torch.float16)


def model_meta(info: DatasetInfo, mean: Sequence[float], std: Sequence[float]) -> dict[str, Any]:
    return {
        "dataset": info.name,
        "class_names": list(info.class_names),
        "palette": [list(c) for c in info.palette],
        "ignore_index": info.ignore_index,
        "mean": list(mean),
        "std": list(std),
    }


def normalisation(meta: dict[str, Any]) -> tuple[list[float], list[float]]:
    return list(meta.get("mean", IMAGENET_MEAN)), list(meta.get("std", IMAGENET_STD))


def palette_of(meta: dict[str, Any], num_classes: int) -> np.ndarray:
    """(256, 3) uint8 colour table: the checkpoint's palette, black elsewhere."""
    from atrous.data import default_palette

    colours = meta.get("palette") or default_palette(num_classes)
    table = np.zeros((256, 3), np.uint8)
    table[: len(colours)] = np.asarray(colours, np.uint8)
    return table


def batches_of_equal_size(
    dataset: torch.utils.data.Dataset, batch_size: int, transform
) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """Consecutive items stacked into batches: items are taken in blocks of `batch_size`
    (0..B-1, B..2B-1, ...), and a block is cut where the image size changes. Yields
    (normalised images, masks, raw uint8 images). A shard made of whole blocks is batched as
    the same items are in the whole dataset (distributed evaluation relies on it)."""
    images, masks, raws = [], [], []
    for index in range(len(dataset)):
        raw, mask = dataset[index]
        image, mask = transform(raw, mask, None)
        if images and (image.shape != images[0].shape or index % batch_size == 0):
            yield torch.stack(images), torch.stack(masks), torch.stack(raws)
            images, masks, raws = [], [], []
        images.append(image)
        masks.append(mask)
        raws.append(raw)
    if images:
        yield torch.stack(images), torch.stack(masks), torch.stack(raws)
