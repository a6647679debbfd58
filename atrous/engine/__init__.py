"""Train, evaluate, predict, checkpoints."""

from atrous.data import DATASETS, DataError, ImageTooLarge, decode_image
from atrous.engine.checkpoint import load_checkpoint, save_checkpoint
from atrous.engine.errors import UserError
from atrous.engine.evaluate import evaluate, format_table
from atrous.engine.predict import predict
from atrous.engine.train import TrainConfig, train
from atrous.models import model_summaries

__all__ = [
    "DATASETS",
    "DataError",
    "ImageTooLarge",
    "TrainConfig",
    "UserError",
    "decode_image",
    "evaluate",
    "format_table",
    "load_checkpoint",
    "model_summaries",
    "predict",
    "save_checkpoint",
    "train",
]
