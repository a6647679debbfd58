"""Train, evaluate, predict, checkpoints."""

from atrous.engine.checkpoint import load_checkpoint, save_checkpoint
from atrous.engine.errors import UserError
from atrous.engine.evaluate import evaluate, format_table
from atrous.engine.predict import predict
from atrous.engine.train import TrainConfig, train

__all__ = [
    "TrainConfig",
    "UserError",
    "evaluate",
    "format_table",
    "load_checkpoint",
    "predict",
    "save_checkpoint",
    "train",
]
