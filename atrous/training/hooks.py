"""Training features plug into the trainer here: one small hook protocol, and a registry.

A feature (weight averaging, adversarial training, the best model, early stopping, stopping
on a signal, loggers, ...) is one class that overrides the hooks it needs; the trainer calls
every enabled feature at each point, in the order they were registered:

    on_start(run)                                   once, after a resumed state is loaded
    trains_model(run) -> bool                       False: this step leaves the segmenter as it is
    loss_terms(run, images, outputs, masks)         extra terms added to a micro-batch's loss
    after_backward(run, images, outputs, masks)     after its backward (a second network's loss)
    before_optimizer_step(run)                      after every micro-batch's backward, just before the
                                                    optimiser step, in steps that train the model
                                                    (gradient clipping; under fp16, run.scaler)
    after_step(run, parts)                          after the optimiser step (parts: the step's losses)
    after_evaluation(run, metrics)                  after each evaluation during training
    on_end(run, summary)                            once, when the loop ends (finished or stopped)
    model_to_save() -> Module | None                the model the run hands out instead of its own
    record() -> dict | None                         what metrics.json says of it, under its name
    state_dict() / load_state_dict(state)           the feature's share of the resume state

`run` is the trainer (see `Run` for what a feature may read of it, and `request_stop`). A
feature is built by `from_config(cfg, run)`, which returns None when its options leave it
off, and its options are checked by `check_options(cfg)` before any work. Its options are a
dataclass of `atrous.options.option` fields, mixed into TrainConfig (atrous.training.config).
Learnt from Lightning's Callback and mmengine's Hook: the same points, without their
priorities, stages and loop objects.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ClassVar, Protocol

import torch

from atrous.registry import Registry


class Run(Protocol):
    """What a feature reads of the trainer: its configuration, the model being trained, where
    it runs and where it writes, and how far it has come."""

    cfg: Any  # the TrainConfig
    model: torch.nn.Module
    device: torch.device
    info: Any  # the training dataset's DatasetInfo
    world: Any  # atrous.runtime.distributed.World
    step: int  # optimiser steps done
    total: int  # the run's iterations
    lr: float  # the base learning rate of the step (each parameter group's is this times its lr_mult)
    elapsed: float  # seconds of training so far (evaluations not counted)
    eval_dataset: Any  # the split evaluated during training, or None
    model_learns: bool  # whether this step trains the segmenter (see trains_model)
    optimizer: torch.optim.Optimizer  # the segmenter's optimiser
    scaler: torch.amp.GradScaler | None  # fp16's gradient scaler: unscale_ before reading gradients

    @property
    def trained_model(self) -> torch.nn.Module:
        """The model the run hands out (a feature's model_to_save, else `model`)."""

    def config_record(self) -> dict[str, Any]:
        """The run's configuration as plain JSON values (what config.json holds)."""

    def request_stop(self, reason: str, *, finished: bool, exit_code: int = 0) -> None:
        """End the loop after this step, its state written; `finished`: the run is complete
        (early stopping), not interrupted (a signal), so --resume auto will not continue it;
        `exit_code`: what `atrous train` then exits with."""


class TrainingFeature:
    """A training feature: every hook does nothing until overridden."""

    name: ClassVar[str] = ""

    @classmethod
    def check_options(cls, cfg: Any) -> None:
        """Raise UserError where the feature's options do not fit together."""

    @classmethod
    def from_config(cls, cfg: Any, run: Run) -> TrainingFeature | None:
        raise NotImplementedError

    def on_start(self, run: Run) -> None:
        pass

    def trains_model(self, run: Run) -> bool:
        return True

    def loss_terms(self, run: Run, images: torch.Tensor, outputs: dict[str, torch.Tensor],
                   masks: torch.Tensor) -> dict[str, torch.Tensor]:
        return {}

    def after_backward(self, run: Run, images: torch.Tensor, outputs: dict[str, torch.Tensor],
                       masks: torch.Tensor) -> dict[str, torch.Tensor]:
        return {}

    def before_optimizer_step(self, run: Run) -> None:
        pass

    def after_step(self, run: Run, parts: dict[str, float]) -> None:
        pass

    def after_evaluation(self, run: Run, metrics: dict[str, Any]) -> None:
        pass

    def on_end(self, run: Run, summary: dict[str, Any]) -> None:
        pass

    def model_to_save(self) -> torch.nn.Module | None:
        return None

    def record(self) -> dict[str, Any] | None:
        return None

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass


_FEATURES: Registry[type[TrainingFeature]] = Registry("training feature")


def register_feature(name: str) -> Callable[[type[TrainingFeature]], type[TrainingFeature]]:
    """Class decorator: the feature becomes part of every run whose options enable it."""

    def add(cls: type[TrainingFeature]) -> type[TrainingFeature]:
        _FEATURES.add(name, cls)
        cls.name = name
        return cls

    return add


def list_features() -> tuple[str, ...]:
    return _FEATURES.names()


def check_feature_options(cfg: Any) -> None:
    for cls in _FEATURES.values():
        cls.check_options(cfg)


def build_features(cfg: Any, run: Run) -> list[TrainingFeature]:
    """The features `cfg` enables, in registration order."""
    built = (cls.from_config(cfg, run) for cls in _FEATURES.values())
    return [feature for feature in built if feature is not None]
