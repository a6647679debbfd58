"""A trained run as a model people can share: its weights as a pretrained folder whose model
card carries the run's recipe (the options of its config.json that made it) and its last
evaluation (metrics.json). `atrous train --save-pretrained DIR` writes it at the end of a
run; `atrous export --format pretrained` writes it from a run's checkpoint afterwards.

    runs/camvid/                      ->   camvid-deeplab/
      model.safetensors                      model.safetensors
      config.json   (every option)           config.json  (model, meta, recipe, metrics)
      metrics.json  (evaluation)             README.md    (the model card)
"""

from __future__ import annotations

import json
import os
from typing import Any

from atrous.checkpoints import load_checkpoint
from atrous.checkpoints.pretrained import save_pretrained
from atrous.checkpoints.sources import CONFIG_FILE
from atrous.errors import UserError
from atrous.models import SegmentationModel
from atrous.training.config import recipe

RUN_METRICS = "metrics.json"  # beside the run's config.json (CONFIG_FILE, the same name as a pretrained folder's)


def check_pretrained_out(directory: str, option: str) -> None:
    """`directory` (the argument `option`) may be new, empty or an earlier pretrained folder
    (replaced), nothing else: files of other work there are never mixed with or overwritten by
    the model's."""
    if os.path.isfile(directory):
        raise UserError(f"{option} {directory} is a file; give a folder for the pretrained model", argument=option)
    if not os.path.isdir(directory) or not os.listdir(directory):
        return
    try:
        with open(os.path.join(directory, CONFIG_FILE), encoding="utf-8") as f:
            if "atrous_format" in json.load(f):
                return
    except (OSError, ValueError):
        pass
    raise UserError(f"{option} {directory} holds other files; give a new or empty folder", argument=option)


def evaluation(metrics: dict[str, Any]) -> dict[str, Any] | None:
    """The evaluation a metrics.json records after training ({"train": ..., SPLIT: {...}}), as
    the model card shows it (with "split"), or that of `atrous eval --json` (no split named);
    None when there is none."""
    if "mIoU" in metrics:
        return dict(metrics)
    for split, scores in metrics.items():
        if split not in ("train", "init_from") and isinstance(scores, dict) and "mIoU" in scores:
            return {"split": split, **scores}
    return None


def save_run(model: SegmentationModel, directory: str, config: dict[str, Any], metrics: dict[str, Any] | None,
             notes: str | None = None) -> str:
    """`model` as a pretrained folder with the recipe of the run `config` (its config.json)
    and `metrics` (its metrics.json)."""
    return save_pretrained(model, directory, training=recipe(config),
                           metrics=evaluation(metrics) if metrics else None, notes=notes)


def export_run(checkpoint: str, directory: str, *, metrics_file: str | None = None, notes: str | None = None) -> str:
    """The run whose checkpoint is `checkpoint` as a pretrained folder: the recipe from the
    config.json beside it, the evaluation from `metrics_file` (default: the metrics.json
    beside it). A pretrained folder keeps its card's recipe, evaluation and notes unless
    replaced; a checkpoint outside a run folder gets a card without a recipe."""
    check_pretrained_out(directory, "out")
    model = load_checkpoint(checkpoint)
    run = os.path.dirname(os.path.abspath(checkpoint)) if os.path.isfile(checkpoint) else checkpoint
    config = _read_json(os.path.join(run, CONFIG_FILE), required=False) or {}
    metrics = _read_json(metrics_file, required=True) if metrics_file else None
    if metrics_file and (metrics is None or evaluation(metrics) is None):
        raise UserError(f"metrics {metrics_file} holds no evaluation (no split with an mIoU)", argument="metrics")
    if "atrous_format" in config:  # a pretrained folder already
        return save_pretrained(model, directory, training=config.get("training"), notes=notes or config.get("notes"),
                               metrics=evaluation(metrics) if metrics else config.get("metrics"))
    if metrics is None:
        metrics = _read_json(os.path.join(run, RUN_METRICS), required=False)
    if not isinstance(config.get("model"), str):  # not a run's configuration
        return save_pretrained(model, directory, metrics=evaluation(metrics) if metrics else None, notes=notes)
    return save_run(model, directory, config, metrics, notes)


def _read_json(path: str, *, required: bool) -> dict[str, Any] | None:
    if not os.path.isfile(path):
        if required:
            raise UserError(f"no such file: {path}")
        return None
    try:
        with open(path, encoding="utf-8") as f:
            value = json.load(f)
    except (OSError, ValueError) as err:
        raise UserError(f"{path} is not readable JSON: {err}") from err
    if not isinstance(value, dict):
        raise UserError(f"{path} is not a JSON object")
    return value
