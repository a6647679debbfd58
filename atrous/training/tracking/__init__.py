"""Experiment tracking (`--log tensorboard,mlflow,wandb,csv`): the trackers, each in its own
module with its optional extra (registered by name in atrous.training.tracking.base), and the
training feature that feeds them (atrous.training.tracking.feature)."""

from atrous.training.tracking import csv_logger, mlflow_logger, tensorboard_logger, wandb_logger  # noqa: F401
from atrous.training.tracking.base import TRACKERS, RunInfo, Tracker, register_tracker

__all__ = ["TRACKERS", "RunInfo", "Tracker", "register_tracker"]
