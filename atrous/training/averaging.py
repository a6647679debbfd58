"""Weight averaging (`ema_decay`): an exponential moving average of the model's weights and
batch-norm statistics, through timm's ModelEmaV3, as timm and mmsegmentation's EMA hook keep
one. After each optimiser step, every floating-point tensor e of the average moves towards
the trained model's w:

    e <- d e + (1 - d) w,    d = min(ema_decay, 1 - (1 + t) ** -3/4)    (t = steps before this one)

so the first step copies the model (d = 0) and the decay ramps up over the first thousand
steps (timm's warm-up, its power for short schedules) before it reaches `ema_decay`. The
average is what a run saves, evaluates and shares; the optimiser trains the raw model, which
the training state keeps beside it for --resume.

As a training feature (`--ema-decay D`): updated after each step in which the segmenter
learns, handed out in place of the trained model, and resumed with the run.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from timm.utils.model_ema import ModelEmaV3

from atrous.options import option
from atrous.training.hooks import Run, TrainingFeature, register_feature

WARMUP_POWER = 0.75


class WeightAverage:
    """The moving average of `model` (a copy kept in eval mode)."""

    def __init__(self, model: torch.nn.Module, decay: float) -> None:
        self._ema = ModelEmaV3(model, decay=decay, use_warmup=True, warmup_power=WARMUP_POWER,
                               stochastic_rounding=False)

    @property
    def model(self) -> Any:
        return self._ema.module

    def update(self, model: torch.nn.Module, steps_done: int) -> None:
        """After optimiser step number `steps_done` (1 for the first)."""
        self._ema.update(model, step=steps_done)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return self._ema.module.state_dict()

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self._ema.module.load_state_dict(state)


@dataclass(kw_only=True)
class EmaOptions:
    ema_decay: float | None = option(None, "keep an exponential moving average of the weights and batch-norm "
                                     "statistics, its decay ramped up to this value (e.g. 0.999); the average is "
                                     "the model saved, evaluated and shared (atrous.training.averaging)",
                                     gt=0, lt=1)


@register_feature("ema")
class AverageFeature(TrainingFeature):
    """--ema-decay: the average follows the model after every step that trains it."""

    def __init__(self, model: torch.nn.Module, decay: float) -> None:
        self.average = WeightAverage(model, decay)

    @classmethod
    def from_config(cls, cfg: Any, run: Run) -> AverageFeature | None:
        return cls(run.model, cfg.ema_decay) if cfg.ema_decay else None

    def after_step(self, run: Any, parts: dict[str, float]) -> None:
        if run.model_learns:
            self.average.update(run.model, run.step)

    def model_to_save(self) -> torch.nn.Module:
        return self.average.model

    def state_dict(self) -> dict[str, Any]:
        return self.average.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.average.load_state_dict(state)
