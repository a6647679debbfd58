"""Mask files for the binary and multilabel tasks, read into atrous' masks (atrous.data.tasks),
and the check of one mask that `atrous data check` lists problems with.

Binary masks: one single-band file per image (PNG, TIFF or .npy) holding
- 0 (background) and 1 (foreground), 255 void; or
- 0 and 255, as most tools save them: 255 is then the foreground.
A mask is read as 0/255 when it holds no 1 (only 0 and 255), and as 0/1 with 255 void
otherwise. A 0/1 dataset whose masks mark void but may hold no foreground at all (only 0 and
255) says so with `"foreground": 1` in its classes.json (255 is then void in every mask);
`"foreground": 255` makes every 255 the foreground (void then only a classes.json
`ignore_index` other than 255).

Multilabel masks, one of two layouts under `masks/`:
- `masks/<stem>.tif` (K bands) or `masks/<stem>.npy` ((K, H, W) or (H, W, K)): 0/1 per label,
  255 void;
- `masks/<label>/<stem>.png`: one binary mask per label (read as binary masks are, above),
  every label's folder holding every image's mask.
"""

from __future__ import annotations

import os

import numpy as np

from atrous.data.io import DataError, read_mask
from atrous.data.meta import IGNORE_INDEX

ARRAY_SUFFIXES = (".npy",)
TIFF_SUFFIXES = (".tif", ".tiff")


def binary_values(source: np.ndarray, foreground: int | None = None, void: int = IGNORE_INDEX) -> np.ndarray:
    """A binary mask's values -> uint8 0/1 with 255 void (see the module's docstring). Values
    that are not background, foreground or void are kept, for `check_mask` to name them."""
    values = np.asarray(source)
    if foreground is None:
        foreground = 255 if not np.any(values == 1) and np.any(values == 255) else 1
    out = np.where(values == foreground, 1, values)
    if void != IGNORE_INDEX:
        out = np.where(values == void, IGNORE_INDEX, out)
    return out.astype(np.int64)


def check_mask(mask: np.ndarray, task: str, num_classes: int, path: str) -> str | None:
    """One line saying what is wrong with `mask` (read by `read_task_mask`: 0/1/255 for binary,
    (K, H, W) for multilabel; class indices for multiclass), or None when it fits the task."""
    mask = np.asarray(mask)
    if task == "multilabel":
        if mask.ndim != 3 or mask.shape[0] != num_classes:
            return (f"mask {path} has shape {tuple(mask.shape)}; a multilabel mask needs {num_classes} planes "
                    "(one per label, K x H x W)")
        allowed, what = (0, 1, IGNORE_INDEX), "0/1 per label (255 void)"
    elif mask.ndim != 2:
        return f"mask {path} has {mask.ndim} dimensions; a {task} mask is one H x W plane"
    elif task == "binary":
        allowed, what = (0, 1, IGNORE_INDEX), "0 and 1, or 0 and 255 (255 void in a 0/1 mask)"
    else:
        allowed, what = (*range(num_classes), IGNORE_INDEX), f"classes 0..{num_classes - 1} and 255 (void)"
    bad = np.setdiff1d(np.unique(mask), allowed)
    if bad.size:
        shown = ", ".join(str(v) for v in bad.tolist()[:5])
        return f"{task} mask {path} holds {shown}: its values must be {what}"
    return None


def read_array(path: str) -> np.ndarray:
    """A mask stored as an array: .npy, or a TIFF (any band count, through tifffile)."""
    if not os.path.isfile(path):
        raise DataError(f"mask not found: {path}")
    if path.lower().endswith(ARRAY_SUFFIXES):
        try:
            return np.load(path, allow_pickle=False)
        except (OSError, ValueError) as err:
            raise DataError(f"cannot read mask {path}: {err}") from err
    if path.lower().endswith(TIFF_SUFFIXES):
        try:
            import tifffile
        except ImportError as err:
            raise DataError(f"reading the TIFF mask {path} needs tifffile: pip install tifffile") from err
        try:
            return np.asarray(tifffile.imread(path))
        except (OSError, ValueError, KeyError, IndexError) as err:  # tifffile's errors on damaged files
            raise DataError(f"cannot read mask {path}: {err}") from err
    return read_mask(path)


def label_planes(values: np.ndarray, num_labels: int, path: str) -> np.ndarray:
    """A multilabel array, (K, H, W) or (H, W, K), as (K, H, W)."""
    if values.ndim == 3 and values.shape[0] == num_labels:
        return values
    if values.ndim == 3 and values.shape[-1] == num_labels:
        return np.moveaxis(values, -1, 0)
    if values.ndim == 2 and num_labels == 1:
        return values[None]
    raise DataError(f"mask {path} has shape {tuple(values.shape)}; a multilabel mask needs {num_labels} planes "
                    "(K x H x W or H x W x K, one per label), or one PNG per label in masks/<label>/")


def read_task_mask(paths: str | tuple[str, ...], task: str, num_classes: int, *,
                   foreground: int | None = None, void: int = IGNORE_INDEX) -> np.ndarray:
    """The mask of one image for `task` as int64: binary (H, W) 0/1/255; multilabel (K, H, W)
    from one array file or from K per-label files (`paths` a tuple). DataError naming the
    file when its values do not fit the task."""
    if isinstance(paths, tuple):  # one binary PNG per label
        planes = [binary_values(read_array(p), foreground, void) for p in paths]
        shapes = {plane.shape for plane in planes}
        if len(shapes) > 1:
            raise DataError(f"the label masks of {paths[0]} differ in size: {sorted(shapes)}")
        mask, path = np.stack(planes), paths[0]
    elif task == "binary":
        mask, path = binary_values(read_array(paths), foreground, void), paths
        mask = mask[0] if mask.ndim == 3 and mask.shape[0] == 1 else mask
    else:
        mask, path = label_planes(read_array(paths), num_classes, paths).astype(np.int64), paths
        if void != IGNORE_INDEX:
            mask = np.where(mask == void, IGNORE_INDEX, mask)
    problem = check_mask(mask, task, num_classes, path)
    if problem:
        raise DataError(f"{problem}; fix the mask or the task", argument="task")
    return mask.astype(np.int64)
