"""The dataset options every command that reads a dataset shares, declared once: where its
files are (`data_root`), the class count of a folder without classes.json, the side of
the synthetic scenes, and the bands a model takes with their normalisation. Commands mix
these groups into their options (atrous.options)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from atrous.errors import UserError
from atrous.options import option

MIN_SYNTHETIC_SIZE = 32  # atrous.data.synthetic draws nothing smaller


@dataclass(kw_only=True)
class DataRootOptions:
    data_root: str | None = option(None, "dataset folder in its native layout (default ../shared/data/<dataset>)")


@dataclass(kw_only=True)
class DatasetOptions(DataRootOptions):
    num_classes: int | None = option(None, "folder datasets without classes.json", ge=1)
    synthetic_size: int = option(128, "side of the synthetic scenes", ge=MIN_SYNTHETIC_SIZE)


@dataclass(kw_only=True)
class BandOptions:
    """What a model is fed: its band count and each band's normalisation. 8-bit photographs
    are scaled to 0-1 first (mean and std on that scale; ImageNet's by default); 16-bit, float
    and multi-band images are normalised in the units they are stored in, with statistics
    that `atrous data stats` measures (there is no default for them)."""

    in_channels: int | None = option(None, "bands the model takes (default: the images' band count)", ge=1)
    mean: tuple[float, ...] | None = option(None, "normalisation mean, one value per band (default: ImageNet's for "
                                            "8-bit RGB; `atrous data stats` measures them for other images)",
                                            nargs="+", metavar="M")
    std: tuple[float, ...] | None = option(None, "normalisation standard deviation, one value per band",
                                           nargs="+", metavar="S", gt=0)


def check_normalisation(mean: Sequence[float] | None, std: Sequence[float] | None) -> None:
    """mean and std are given together, one value per band each."""
    if (mean is None) != (std is None):
        raise UserError("mean and std are given together (one value per band each)", argument=("mean", "std"))
    if mean is not None and std is not None and len(mean) != len(std):
        raise UserError(f"mean and std need one value per band, got {len(mean)} and {len(std)}",
                        argument=("mean", "std"))


@dataclass(kw_only=True)
class TaskOptions:
    """What the masks mean and the model predicts (atrous.data.tasks): one class per pixel, a
    foreground, or overlapping labels; and where a sigmoid's probability becomes a label."""

    task: str = option("multiclass", "multiclass: one class per pixel (softmax); binary: foreground or not, "
                       "one output (sigmoid); multilabel: K labels that may overlap, each its own sigmoid",
                       choices=("multiclass", "binary", "multilabel"))


def threshold_option():
    """The --threshold declaration (ThresholdOptions; a frozen dataclass such as serve's takes it
    as a field)."""
    return option(None, "binary/multilabel: a pixel has a label where its probability exceeds this (default: "
                  "the model's, 0.5 unless trained with another)", gt=0, lt=1)


@dataclass(kw_only=True)
class ThresholdOptions:
    threshold: float | None = threshold_option()
