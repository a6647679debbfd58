"""Gradient clipping (`--clip-grad-norm MAX`): before each optimiser step that trains the
segmenter, its gradients are scaled by min(1, MAX / ||g||), ||g|| the L2 norm of all of them
together (torch.nn.utils.clip_grad_norm_), as mmsegmentation's `clip_grad=dict(max_norm=...)` does.

The norm is the global batch's: clipping runs after the last micro-batch's backward (the
`before_optimizer_step` hook), when --grad-accum has summed every micro-batch and, under
torchrun, DDP has summed every rank's gradients, so each rank clips the same gradients in the
same way. Under fp16 the gradient scaler unscales them first (`scaler.unscale_`, PyTorch's
AMP recipe); a step whose gradients are not finite is then skipped by the scaler, as without
clipping. metrics.json says how many steps were clipped, under `clip_grad`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch

from atrous.options import option
from atrous.training.hooks import Run, TrainingFeature, register_feature


@dataclass(kw_only=True)
class ClipGradOptions:
    clip_grad_norm: float | None = option(None, "clip the gradients' total L2 norm to MAX before each optimiser "
                                          "step (the global batch's, after every micro-batch; unscaled first "
                                          "under fp16)", gt=0, metavar="MAX")


@register_feature("clip_grad")
class ClipGradNorm(TrainingFeature):
    """--clip-grad-norm: the segmenter's gradients clipped just before each optimiser step."""

    def __init__(self, max_norm: float) -> None:
        self.max_norm = max_norm
        self.counts = {"steps": 0, "clipped": 0, "not_finite": 0}

    @classmethod
    def from_config(cls, cfg: Any, run: Run) -> ClipGradNorm | None:
        return cls(cfg.clip_grad_norm) if cfg.clip_grad_norm else None

    def before_optimizer_step(self, run: Run) -> None:
        if run.scaler is not None:  # the norm of the true gradients, not of the scaled ones
            run.scaler.unscale_(run.optimizer)
        norm = float(torch.nn.utils.clip_grad_norm_(run.model.parameters(), self.max_norm))
        self.counts["steps"] += 1
        if not math.isfinite(norm):
            self.counts["not_finite"] += 1
        elif norm > self.max_norm:
            self.counts["clipped"] += 1

    def record(self) -> dict[str, Any]:
        return {"max_norm": self.max_norm, **self.counts}

    def state_dict(self) -> dict[str, Any]:
        return dict(self.counts)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.counts.update({key: int(value) for key, value in state.items()})
