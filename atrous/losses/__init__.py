"""Training losses by name (`--loss ce|ohem|dice|jaccard|lovasz|focal`, and any registered with
`register_loss`), normalised over the global batch (see atrous.losses.base).

Each loss is one module of this package, found and imported here: a new loss is a new file
whose class carries `@register_loss("name")`."""

import importlib
import pkgutil

from atrous.losses.base import BatchTotals, Reduce, SegmentationLoss, labelled_weight, total_loss
from atrous.losses.registry import (
    LEGACY_KEYWORDS,
    build_loss,
    build_loss_options,
    list_losses,
    loss_options,
    loss_tasks,
    register_loss,
    weighted_losses,
)

for _module in pkgutil.iter_modules(__path__):
    if _module.name not in ("base", "registry"):
        importlib.import_module(f"{__name__}.{_module.name}")

from atrous.losses.ohem import kth_smallest  # noqa: E402  (tested directly)

LOSSES = list_losses()  # the built-in losses; list_losses() also holds those registered later
WEIGHTED_LOSSES = weighted_losses()

__all__ = [
    "LEGACY_KEYWORDS",
    "LOSSES",
    "WEIGHTED_LOSSES",
    "BatchTotals",
    "Reduce",
    "SegmentationLoss",
    "build_loss",
    "build_loss_options",
    "kth_smallest",
    "labelled_weight",
    "list_losses",
    "loss_options",
    "loss_tasks",
    "register_loss",
    "total_loss",
    "weighted_losses",
]
