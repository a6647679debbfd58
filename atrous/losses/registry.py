"""Losses by name: `@register_loss("name")` on a SegmentationLoss subclass makes it
`--loss name`, its keyword arguments its `--loss-opt KEY=VALUE` options."""

from __future__ import annotations

import inspect
import math
from dataclasses import dataclass
from typing import Any

import torch

from atrous.errors import UserError
from atrous.losses.base import Reduce, SegmentationLoss, alone
from atrous.registry import Registry

# what every loss receives from the trainer, not from --loss-opt
_GIVEN = ("self", "ignore_index", "class_weights", "reduce", "task")
# keywords of build_loss from before --loss-opt: (loss, its option); ignored by the other losses
LEGACY_KEYWORDS = {"ohem_thresh": ("ohem", "thresh"), "ohem_min_kept": ("ohem", "min_kept"),
                   "focal_gamma": ("focal", "gamma"), "lovasz_per_image": ("lovasz", "per_image")}


@dataclass(frozen=True)
class LossEntry:
    cls: type[SegmentationLoss]
    weighted: bool  # takes --class-weights


_LOSSES: Registry[LossEntry] = Registry("loss")


def register_loss(name: str, *, weighted: bool = False):
    """Class decorator: the loss becomes `--loss name`. `weighted`: it takes per-class weights
    (--class-weights). Its constructor's keyword arguments, with defaults, are its options."""

    def add(cls: type[SegmentationLoss]) -> type[SegmentationLoss]:
        _LOSSES.add(name, LossEntry(cls, weighted), key=cls)
        return cls

    return add


def list_losses() -> tuple[str, ...]:
    return _LOSSES.names()


def loss_tasks(name: str) -> tuple[str, ...]:
    """The tasks loss `name` takes (multiclass, binary, multilabel)."""
    return tuple(_entry(name).cls.tasks)


def weighted_losses() -> tuple[str, ...]:
    return tuple(name for name, entry in _LOSSES.items() if entry.weighted)


def loss_options(name: str) -> dict[str, Any]:
    """The options of loss `name` with their defaults."""
    signature = inspect.signature(_entry(name).cls.__init__)
    return {p.name: p.default for p in signature.parameters.values()
            if p.name not in _GIVEN and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}


def build_loss_options(name: str, settings: dict[str, Any]) -> dict[str, Any]:
    """`settings` checked against loss `name`'s options (names, and types of their defaults);
    one-line UserError naming the loss and its options otherwise."""
    known = loss_options(name)
    for key, value in settings.items():
        if key not in known:
            listed = ", ".join(known) or "none"
            raise UserError(f"loss_options {key}: loss '{name}' has no such option (its options: {listed})",
                            argument="loss_options")
        default = known[key]
        if isinstance(default, bool) and not isinstance(value, bool):
            raise UserError(f"loss_options {key} must be true or false, got {value!r}", argument="loss_options")
        if isinstance(default, int | float) and not isinstance(default, bool):
            if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
                raise UserError(f"loss_options {key} must be a finite number, got {value!r}", argument="loss_options")
            if isinstance(default, int) and not isinstance(value, int):
                raise UserError(f"loss_options {key} must be a whole number, got {value!r}", argument="loss_options")
    _entry(name).cls.check_options(dict(settings))
    return dict(settings)


def build_loss(name: str, *, ignore_index: int = 255, class_weights: torch.Tensor | None = None,
               reduce: Reduce = alone, task: str = "multiclass", **options: Any) -> SegmentationLoss:
    """The loss called `name` with its `options` (see `loss_options(name)`) for `task`
    (multiclass, binary, multilabel; a loss without the latter two refuses them). The keywords
    ohem_thresh, ohem_min_kept, focal_gamma and lovasz_per_image of earlier releases still
    work, and apply to their own loss only."""
    entry = _entry(name)
    if task != "multiclass" and task not in entry.cls.tasks:
        raise ValueError(f"loss {name} is for the multiclass task; for {task} use one of "
                         f"{', '.join(n for n, e in _LOSSES.items() if task in e.cls.tasks)}")
    if class_weights is not None and not entry.weighted:
        raise ValueError(f"class weights apply to {', '.join(weighted_losses())}, not to {name}")
    settings = {}
    for key, value in options.items():
        if key in LEGACY_KEYWORDS:
            loss, option = LEGACY_KEYWORDS[key]
            if loss == name:
                settings[option] = value
        else:
            settings[key] = value
    try:
        settings = build_loss_options(name, settings)
    except UserError as err:
        raise ValueError(str(err)) from err
    extra = {"task": task} if task != "multiclass" else {}  # losses registered before tasks take no task
    return entry.cls(ignore_index=ignore_index, class_weights=class_weights, reduce=reduce, **extra, **settings)


def _entry(name: str) -> LossEntry:
    return _LOSSES.get(name)
