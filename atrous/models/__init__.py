"""Model families (one file each), the registry and the shared base class.

Importing this package imports every family so that its models register themselves.
"""

import importlib
import pkgutil

from atrous.models.base import SegmentationModel, set_output_stride
from atrous.models.registry import (
    create_model,
    describe_model,
    list_models,
    model_family,
    model_options,
    model_summaries,
    register_model,
)

# a new family is a new file whose models carry @register_model: nothing to list here
for _module in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_module.name}")

__all__ = [
    "SegmentationModel",
    "create_model",
    "describe_model",
    "list_models",
    "model_family",
    "model_options",
    "model_summaries",
    "register_model",
    "set_output_stride",
]
