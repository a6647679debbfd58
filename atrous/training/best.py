"""The best model of a run (`--save-best METRIC`): after each evaluation during training,
the model the run hands out is written to `best.safetensors` when it scores higher on METRIC
than every earlier evaluation, with the iteration and the metrics it was chosen at (in the
file's metadata, in metrics.json under "best" and in the model card). Its best score is part
of the training state, so a resumed run keeps choosing against it."""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import Any

from atrous.checkpoints.checkpoint import save_checkpoint
from atrous.errors import UserError
from atrous.options import option
from atrous.training.hooks import Run, TrainingFeature, register_feature

BEST_FILE = "best.safetensors"
SUMMARY_METRICS = ("mIoU", "pixel_accuracy", "mean_accuracy", "fw_iou")
CLASS_PREFIX = "iou:"
DEFAULT_METRIC = "mIoU"


@dataclass(kw_only=True)
class BestOptions:
    save_best: str | None = option(None, "keep the model that scores highest on METRIC at the evaluations during "
                                   f"training as best.safetensors: {', '.join(SUMMARY_METRICS)} or iou:CLASS (one "
                                   f"class's IoU, e.g. iou:Road); alone, {DEFAULT_METRIC}. Evaluates every "
                                   "--eval-every iterations (default: every --checkpoint-every)", metavar="METRIC",
                                   nargs="?", const=DEFAULT_METRIC)


def check_metric(metric: str, option: str) -> None:
    """The metric's name alone (its class is checked once the dataset is known); errors name
    the argument `option` that gave it."""
    if metric not in SUMMARY_METRICS and not (metric.startswith(CLASS_PREFIX) and len(metric) > len(CLASS_PREFIX)):
        raise UserError(f"{option} {metric}: choose one of {', '.join(SUMMARY_METRICS)} or iou:CLASS", argument=option)


def class_index(metric: str, class_names: list[str], option: str) -> int | None:
    """The class of an iou:CLASS metric (a name or an index); None for a summary metric."""
    if not metric.startswith(CLASS_PREFIX):
        return None
    name = metric[len(CLASS_PREFIX):]
    if name in class_names:
        return class_names.index(name)
    if name.isdigit() and int(name) < len(class_names):
        return int(name)
    raise UserError(f"{option} {metric}: no class '{name}' (the classes: {', '.join(class_names)})", argument=option)


def metric_value(metrics: dict[str, Any], metric: str, index: int | None) -> float:
    """METRIC's value in an evaluation's metrics; NaN where it is undefined (a class absent)."""
    value = metrics[metric] if index is None else metrics["per_class_iou"][index]
    return float("nan") if value is None else float(value)


class Tracker:
    """The highest value seen of one metric, and how many evaluations since it last rose by
    more than `min_delta`."""

    def __init__(self, metric: str, index: int | None, min_delta: float = 0.0) -> None:
        self.metric, self.index, self.min_delta = metric, index, min_delta
        self.best: float | None = None
        self.step = 0
        self.since = 0  # evaluations without an improvement

    def improved(self, metrics: dict[str, Any], step: int) -> bool:
        value = metric_value(metrics, self.metric, self.index)
        if not math.isnan(value) and (self.best is None or value > self.best + self.min_delta):
            self.best, self.step, self.since = value, step, 0
            return True
        self.since += 1
        return False

    def state_dict(self) -> dict[str, Any]:
        return {"best": self.best, "step": self.step, "since": self.since}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.best, self.step, self.since = state["best"], int(state["step"]), int(state["since"])


@register_feature("best")
class BestModel(TrainingFeature):
    """--save-best: best.safetensors follows the highest score."""

    def __init__(self, tracker: Tracker, path: str) -> None:
        self.tracker, self.path = tracker, path
        self.metrics: dict[str, Any] | None = None

    @classmethod
    def check_options(cls, cfg: Any) -> None:
        if cfg.save_best is not None:
            check_metric(cfg.save_best, "save_best")
            if not cfg.eval_split:
                raise UserError("save_best needs an evaluated split (eval_split)", argument=("save_best", "eval_split"))

    @classmethod
    def from_config(cls, cfg: Any, run: Run) -> BestModel | None:
        if cfg.save_best is None:
            return None
        index = class_index(cfg.save_best, list(run.info.class_names), "save_best")
        return cls(Tracker(cfg.save_best, index), os.path.join(cfg.out, BEST_FILE))

    def after_evaluation(self, run: Any, metrics: dict[str, Any]) -> None:
        if not self.tracker.improved(metrics, run.step):
            return
        self.metrics = metrics
        if run.world.is_main:
            save_checkpoint(run.trained_model, self.path, step=run.step, total_iters=run.total,
                            best=self.record())

    def record(self) -> dict[str, Any]:
        """What metrics.json and the model card say of the choice."""
        return {"metric": self.tracker.metric, "value": self.tracker.best, "step": self.tracker.step,
                "file": BEST_FILE, "metrics": _summary(self.metrics or {})}

    def state_dict(self) -> dict[str, Any]:
        return {**self.tracker.state_dict(), "metrics": self.metrics}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.tracker.load_state_dict(state)
        self.metrics = state.get("metrics")


def _summary(metrics: dict[str, Any]) -> dict[str, Any]:
    keep = (*SUMMARY_METRICS, "per_class_iou", "class_names")
    return {key: metrics[key] for key in keep if key in metrics}

