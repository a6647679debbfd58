"""The experiment trackers of `--log tensorboard,mlflow,wandb,csv`, each in its own module with
its optional extra, registered by name (atrous.trackers.base). The training feature that feeds
them is atrous.training.tracking; nothing here knows of training."""

from atrous.trackers import csv_logger, mlflow_logger, tensorboard_logger, wandb_logger  # noqa: F401
from atrous.trackers.base import TRACKERS, RunInfo, Tracker, register_tracker

__all__ = ["TRACKERS", "RunInfo", "Tracker", "register_tracker"]
