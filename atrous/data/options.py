"""The dataset options every command that reads a dataset shares, declared once: where its
files are (`data_root`), the class count of a folder without classes.json, and the side of
the synthetic scenes. Commands mix these groups into their options (atrous.options)."""

from __future__ import annotations

from dataclasses import dataclass

from atrous.options import option

MIN_SYNTHETIC_SIZE = 32  # atrous.data.synthetic draws nothing smaller


@dataclass(kw_only=True)
class DataRootOptions:
    data_root: str | None = option(None, "dataset folder in its native layout (default ../shared/data/<dataset>)")


@dataclass(kw_only=True)
class DatasetOptions(DataRootOptions):
    num_classes: int | None = option(None, "folder datasets without classes.json", ge=1)
    synthetic_size: int = option(128, "side of the synthetic scenes", ge=MIN_SYNTHETIC_SIZE)
