"""Stopping early (`--early-stop PATIENCE`, `--min-delta D`): the run ends, finished, when the
metric of --save-best (mIoU when not given) has not risen by more than D in PATIENCE
evaluations in a row (Lightning's EarlyStopping, mode "max"). The best score and the count
are part of the training state, so a resumed run counts on from where it stopped."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from atrous.errors import UserError
from atrous.options import option
from atrous.training.best import DEFAULT_METRIC, Tracker, check_metric, class_index
from atrous.training.hooks import Run, TrainingFeature, register_feature


@dataclass(kw_only=True)
class EarlyStopOptions:
    early_stop: int | None = option(None, "end the run when the --save-best metric (default mIoU) has not "
                                    "improved for this many evaluations in a row", ge=1, metavar="PATIENCE")
    min_delta: float = option(0.0, "with --early-stop: the smallest rise that counts as an improvement", ge=0)


@register_feature("early_stop")
class EarlyStopping(TrainingFeature):
    def __init__(self, tracker: Tracker, patience: int) -> None:
        self.tracker, self.patience = tracker, patience

    @classmethod
    def check_options(cls, cfg: Any) -> None:
        if cfg.early_stop is None:
            if cfg.min_delta:
                raise UserError("min_delta applies to early_stop; add early_stop PATIENCE", argument=("min_delta", "early_stop"))
            return
        check_metric(cfg.save_best or DEFAULT_METRIC, "save_best")
        if not cfg.eval_split:
            raise UserError("early_stop needs an evaluated split (eval_split)", argument=("early_stop", "eval_split"))

    @classmethod
    def from_config(cls, cfg: Any, run: Run) -> EarlyStopping | None:
        if cfg.early_stop is None:
            return None
        metric = cfg.save_best or DEFAULT_METRIC
        index = class_index(metric, list(run.info.class_names), "save_best")
        return cls(Tracker(metric, index, cfg.min_delta), cfg.early_stop)

    def after_evaluation(self, run: Run, metrics: dict[str, Any]) -> None:
        self.tracker.improved(metrics, run.step)
        if self.tracker.since >= self.patience:
            run.request_stop(f"early stop: {self.tracker.metric} has not improved by more than "
                             f"{self.tracker.min_delta:g} in {self.patience} evaluations (best "
                             f"{self.tracker.best} at iteration {self.tracker.step})", finished=True)

    def state_dict(self) -> dict[str, Any]:
        return self.tracker.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.tracker.load_state_dict(state)
