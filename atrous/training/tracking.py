"""The training feature behind `--log`: the training loss, learning rate and throughput every
`--log-every` iterations, every evaluation's metrics (per-class IoU included) and the first
`--log-images` evaluated images with their prediction, sent to each tracker named (rank 0
alone). The trackers' run ids are kept in the training state, so a resumed run goes on in
the same TensorBoard folder, MLflow run and W&B run."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from atrous.checkpoints.meta import normalisation, palette_of
from atrous.data import eval_transform
from atrous.inference.infer import infer, prepare
from atrous.inference.plots import colour_labels, display_rgb
from atrous.options import option
from atrous.trackers.base import TRACKERS, RunInfo, Tracker, tracker_names
from atrous.training.hooks import Run, TrainingFeature, register_feature

SUMMARY = ("mIoU", "pixel_accuracy", "mean_accuracy", "fw_iou")


@dataclass(kw_only=True)
class LogOptions:
    log: str | None = option(None, "experiment trackers, comma-separated: tensorboard, mlflow, wandb, csv (each an "
                             "optional extra: pip install 'atrous[tensorboard]')", metavar="NAMES")
    log_dir: str | None = option(None, "where the trackers write: TensorBoard's folder, MLflow's store (a folder or "
                                 "a URI; MLFLOW_TRACKING_URI wins), W&B's folder (default: in --out)")
    log_every: int = option(10, "send the training loss, learning rate and throughput every N iterations", ge=1)
    log_images: int = option(4, "with --log: the first N evaluated images and their prediction as pictures at each "
                             "evaluation", ge=0)


@register_feature("log")
class Tracking(TrainingFeature):
    def __init__(self, names: list[str], cfg: Any) -> None:
        self.names, self.cfg = names, cfg
        self.trackers: dict[str, Tracker] = {}
        self.ids: dict[str, str | None] = {}
        self.sums: dict[str, float] = {}
        self.count = 0
        self.last = (0, 0.0)  # (step, elapsed) at the last report: the throughput since

    @classmethod
    def check_options(cls, cfg: Any) -> None:
        if cfg.log:
            tracker_names(cfg.log)

    @classmethod
    def from_config(cls, cfg: Any, run: Run) -> Tracking | None:
        return cls(tracker_names(cfg.log), cfg) if cfg.log else None

    def on_start(self, run: Any) -> None:
        self.last = (run.step, run.elapsed)
        if not run.world.is_main:
            return
        for name in self.names:
            info = RunInfo(run.cfg.out, self.cfg.log_dir, os.path.basename(os.path.abspath(run.cfg.out)),
                           run.config_record(), self.ids.get(name), run.step)
            self.trackers[name] = TRACKERS.get(name).open(info)
            self.ids[name] = self.trackers[name].run_id

    def after_step(self, run: Any, parts: dict[str, float]) -> None:
        for key, value in parts.items():
            self.sums[key] = self.sums.get(key, 0.0) + value
        self.count += 1
        if run.step % self.cfg.log_every == 0:
            self._report(run)

    def _report(self, run: Any) -> None:
        step, elapsed = self.last
        values = {f"train/{key}": total / self.count for key, total in self.sums.items()}
        values["train/lr"] = run.lr
        if run.elapsed > elapsed:
            values["train/images_per_s"] = self.cfg.batch_size * (run.step - step) / (run.elapsed - elapsed)
        self._send(values, run.step)
        self.sums, self.count, self.last = {}, 0, (run.step, run.elapsed)

    def after_evaluation(self, run: Any, metrics: dict[str, Any]) -> None:
        if not self.trackers:
            return
        split = self.cfg.eval_split
        values = {f"{split}/{key}": metrics[key] for key in SUMMARY if metrics.get(key) is not None}
        names = metrics.get("class_names") or [str(i) for i in range(len(metrics["per_class_iou"]))]
        values.update({f"{split}/iou/{name}": iou for name, iou in zip(names, metrics["per_class_iou"], strict=True)
                       if iou is not None})
        self._send(values, run.step)
        if self.cfg.log_images and run.eval_dataset is not None:
            pictures = prediction_panels(run.trained_model, run.eval_dataset, self.cfg.log_images)
            for tracker in self.trackers.values():
                tracker.images({f"{split}/prediction_{i}": p for i, p in enumerate(pictures)}, run.step)

    def _send(self, values: dict[str, float], step: int) -> None:
        for tracker in self.trackers.values():
            tracker.scalars(values, step)

    def on_end(self, run: Run, summary: dict[str, Any]) -> None:
        for tracker in self.trackers.values():
            tracker.close()
        self.trackers = {}

    def state_dict(self) -> dict[str, Any]:
        return {"ids": dict(self.ids)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.ids = dict(state.get("ids", {}))


@torch.no_grad()
def prediction_panels(model: torch.nn.Module, dataset: Any, count: int) -> list[np.ndarray]:
    """The first `count` images of `dataset`, each as image | ground truth | prediction, (H, 3W, 3) uint8."""
    mean, std = normalisation(model.meta)
    transform = eval_transform(mean, std)
    palette = palette_of(model.meta, model.num_classes)
    ignore = getattr(getattr(dataset, "info", None), "ignore_index", 255)
    net, device = prepare(model, "fp32"), next(model.parameters()).device
    panels = []
    for index in range(min(count, len(dataset))):
        raw, mask = dataset[index]
        image, _ = transform(raw, mask, None)
        labels = infer(net, image[None].to(device))[0].argmax(0).cpu().numpy()
        truth = mask.cpu().numpy()
        panels.append(np.concatenate([display_rgb(raw), colour_labels(truth, palette, ignore),
                                      colour_labels(labels, palette, ignore)], axis=1))
    return panels
