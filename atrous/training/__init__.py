"""Training: the options (config), the trainer with its schedule and exact resume, one global
batch over any number of processes, adversarial training, and fitting a CRF on a frozen model."""

from atrous.training.config import TrainConfig
from atrous.training.trainer import Trainer, poly_lr, train

__all__ = ["TrainConfig", "Trainer", "poly_lr", "train"]
