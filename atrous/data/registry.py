"""Datasets by name: `@register_dataset("name")` on a builder makes it `--dataset name`."""

from __future__ import annotations

import inspect
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from atrous.data.io import DataError
from atrous.data.tasks import check_task, for_task
from atrous.registry import Registry

SHARED_DATA = os.path.join("..", "shared", "data")  # beside the project
NO_ROOT = "-"  # a dataset made in memory (synthetic): it reads no folder

Builder = Callable[..., torch.utils.data.Dataset]


@dataclass(frozen=True)
class DatasetEntry:
    build: Builder  # build(root, split, **options), or build(split, **options) without a root
    root: str | None  # the default folder under ../shared/data; None: --data-root is required
    needs: str  # what --data-root must hold, for the error when it is missing


_DATASETS: Registry[DatasetEntry] = Registry("dataset")


def register_dataset(name: str, *, root: str | None = None, needs: str = ""):
    """Decorator on a dataset class or builder called as `build(root, split, **options)`
    (`build(split, **options)` when `root=NO_ROOT`). `root`: the default folder, relative to
    ../shared/data; None when the user must give --data-root (described by `needs`). The
    options the builder accepts by name (num_classes, synthetic_size, ...) are passed on."""

    def add(build: Builder) -> Builder:
        _DATASETS.add(name, DatasetEntry(build, root, needs), key=build)
        return build

    return add


def list_datasets() -> tuple[str, ...]:
    return _DATASETS.names()


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
    task: str = "multiclass",
    **options: Any,
) -> torch.utils.data.Dataset:
    """A dataset by name; each has `.info` (a DatasetInfo). `task` (atrous.data.tasks): how its
    masks are read; a builder that takes `task` reads them itself, and a two-class dataset
    serves the binary task as it is (class 1 the foreground)."""
    entry = _entry(name)
    given = dict(num_classes=num_classes, synthetic_size=synthetic_size, synthetic_length=synthetic_length,
                 task=check_task(task), **options)
    accepted = _accepted(entry.build, given)
    if entry.root == NO_ROOT:
        return for_task(entry.build(split, **accepted), task, name)
    root = data_root or default_root(name)
    if root is None:
        raise DataError(f"dataset {name} needs data_root DIR{f' ({entry.needs})' if entry.needs else ''}",
                        argument=("dataset", "data_root"))
    return for_task(entry.build(root, split, **accepted), task, name)


def _accepted(build: Builder, options: dict[str, Any]) -> dict[str, Any]:
    parameters = inspect.signature(build).parameters
    if any(p.kind is p.VAR_KEYWORD for p in parameters.values()):
        return options
    return {k: v for k, v in options.items() if k in parameters}


def _entry(name: str) -> DatasetEntry:
    return _DATASETS.get(name)
