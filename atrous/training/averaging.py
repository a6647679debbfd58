"""Weight averaging (`ema_decay`): an exponential moving average of the model's weights and
batch-norm statistics, through timm's ModelEmaV3, as timm and mmsegmentation's EMA hook keep
one. After each optimiser step, every floating-point tensor e of the average moves towards
the trained model's w:

    e <- d e + (1 - d) w,    d = min(ema_decay, 1 - (1 + t) ** -3/4)    (t = steps before this one)

so the first step copies the model (d = 0) and the decay ramps up over the first thousand
steps (timm's warm-up, its power for short schedules) before it reaches `ema_decay`. The
average is what a run saves, evaluates and shares; the optimiser trains the raw model, which
the training state keeps beside it for --resume.
"""

from __future__ import annotations

from typing import Any

import torch
from timm.utils.model_ema import ModelEmaV3

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
