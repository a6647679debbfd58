"""Deprecated: the names `atrous.engine` exported before it was split into rooms. Import them
from their rooms instead: atrous.training (TrainConfig, train), atrous.inference (evaluate,
format_table, predict), atrous.checkpoints (load_checkpoint, save_checkpoint), atrous.errors
(UserError), atrous.data (DATASETS, DataError, ImageTooLarge, decode_image), atrous.models
(model_summaries). See the README's Development map."""

from __future__ import annotations

import importlib
import warnings
from typing import Any

_MOVED = {
    "TrainConfig": "atrous.training", "train": "atrous.training",
    "evaluate": "atrous.inference", "format_table": "atrous.inference", "predict": "atrous.inference",
    "load_checkpoint": "atrous.checkpoints", "save_checkpoint": "atrous.checkpoints",
    "UserError": "atrous.errors", "model_summaries": "atrous.models",
    "DATASETS": "atrous.data", "DataError": "atrous.data", "ImageTooLarge": "atrous.data", "decode_image": "atrous.data",
}


def __getattr__(name: str) -> Any:
    if name not in _MOVED:
        raise AttributeError(f"module 'atrous.engine' has no attribute '{name}'")
    warnings.warn(f"atrous.engine.{name} moved to {_MOVED[name]}.{name}", DeprecationWarning, stacklevel=2)
    return getattr(importlib.import_module(_MOVED[name]), name)
