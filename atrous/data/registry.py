"""Datasets by name: `@register_dataset("name")` on a builder makes it `--dataset name`."""

from __future__ import annotations

import inspect
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from atrous.data.io import DataError

SHARED_DATA = os.path.join("..", "shared", "data")  # beside the project
NO_ROOT = "-"  # a dataset made in memory (synthetic): it reads no folder

Builder = Callable[..., torch.utils.data.Dataset]


@dataclass(frozen=True)
class DatasetEntry:
    build: Builder  # build(root, split, **options), or build(split, **options) without a root
    root: str | None  # the default folder under ../shared/data; None: --data-root is required
    needs: str  # what --data-root must hold, for the error when it is missing


_DATASETS: dict[str, DatasetEntry] = {}


def register_dataset(name: str, *, root: str | None = None, needs: str = ""):
    """Decorator on a dataset class or builder called as `build(root, split, **options)`
    (`build(split, **options)` when `root=NO_ROOT`). `root`: the default folder, relative to
    ../shared/data; None when the user must give --data-root (described by `needs`). The
    options the builder accepts by name (num_classes, synthetic_size, ...) are passed on."""

    def add(build: Builder) -> Builder:
        if name in _DATASETS and _DATASETS[name].build is not build:
            raise ValueError(f"a dataset named '{name}' is already registered")
        _DATASETS[name] = DatasetEntry(build, root, needs)
        return build

    return add


def list_datasets() -> tuple[str, ...]:
    return tuple(_DATASETS)


def default_root(name: str) -> str | None:
    """Where --data-root points for `name` when not given (None: it must be given)."""
    root = _entry(name).root
    return None if root in (None, NO_ROOT) else os.path.join(SHARED_DATA, root)


def build_dataset(
    name: str,
    split: str,
    *,
    data_root: str | None = None,
    num_classes: int | None = None,
    synthetic_size: int = 128,
    synthetic_length: int | None = None,
    **options: Any,
) -> torch.utils.data.Dataset:
    """A dataset by name; each has `.info` (a DatasetInfo)."""
    entry = _entry(name)
    given = dict(num_classes=num_classes, synthetic_size=synthetic_size, synthetic_length=synthetic_length, **options)
    accepted = _accepted(entry.build, given)
    if entry.root == NO_ROOT:
        return entry.build(split, **accepted)
    root = data_root or default_root(name)
    if root is None:
        raise DataError(f"--dataset {name} needs --data-root DIR{f' ({entry.needs})' if entry.needs else ''}")
    return entry.build(root, split, **accepted)


def _accepted(build: Builder, options: dict[str, Any]) -> dict[str, Any]:
    parameters = inspect.signature(build).parameters
    if any(p.kind is p.VAR_KEYWORD for p in parameters.values()):
        return options
    return {k: v for k, v in options.items() if k in parameters}


def _entry(name: str) -> DatasetEntry:
    if name not in _DATASETS:
        raise DataError(f"unknown dataset '{name}'; choose one of: {', '.join(_DATASETS)}")
    return _DATASETS[name]
