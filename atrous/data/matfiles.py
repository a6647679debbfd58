"""MATLAB .mat label files of the dataset releases (PASCAL-Context's `trainval/*.mat`, SIFT
Flow's `SemanticLabels/` and `GeoLabels/`, NYUDv2's and SUN RGB-D's lists), read with scipy.io
(the `datasets` extra; MATLAB v7.3 files, which are HDF5, with h5py), with errors that name
the file."""

from __future__ import annotations

import os

import numpy as np

from atrous.data.io import DataError


def require_scipy(dataset: str) -> None:
    """A one-line DataError naming the extra when scipy is not installed."""
    try:
        import scipy.io  # noqa: F401
    except ImportError as err:
        raise DataError(f"{dataset} reads the release's .mat files with scipy: pip install 'atrous[datasets]'") from err


def require_h5py(dataset: str) -> None:
    """MATLAB v7.3 files are HDF5: a one-line DataError naming the extra without h5py."""
    try:
        import h5py  # noqa: F401
    except ImportError as err:
        raise DataError(f"{dataset} reads MATLAB v7.3 (HDF5) files with h5py: pip install 'atrous[datasets]'") from err


def read_mat_labels(path: str, key: str, what: str) -> np.ndarray:
    """The 2-D integer array `key` of the MATLAB file `path` (H, W), as stored (any int type)."""
    from scipy.io import loadmat
    from scipy.io.matlab import MatReadError

    if not os.path.isfile(path):
        raise DataError(f"{what} label not found: {path}")
    try:
        contents = loadmat(path)
    except (MatReadError, ValueError, OSError, TypeError, NotImplementedError) as err:
        raise DataError(f"cannot read {what} label {path}: {str(err).strip() or type(err).__name__}") from err
    if key not in contents:
        raise DataError(f"{what} label {path} holds no variable '{key}'")
    labels = np.asarray(contents[key])
    if labels.ndim != 2 or labels.size == 0 or labels.dtype.kind not in "uif":
        raise DataError(f"{what} label {path}: '{key}' is not a 2-D label map")
    if labels.dtype.kind == "f":  # MATLAB's default double: whole numbers expected
        if not np.all(np.isfinite(labels)) or np.any(labels != np.round(labels)):
            raise DataError(f"{what} label {path}: '{key}' holds values that are not whole numbers")
        labels = labels.astype(np.int64)
    return labels
