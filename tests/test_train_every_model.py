"""`atrous train --model NAME --dataset synthetic --iters 5` works for every registered model
(small backbones where the model takes one, so that the suite stays quick)."""

from __future__ import annotations

import json
import math

import pytest

import atrous
from atrous.cli import main

# the same small settings as tests/test_models.py, as CLI flags
SMALL_FLAGS = {
    "fcn32s": ["--backbone", "resnet18"],
    "fcn16s": ["--backbone", "resnet18", "--output-stride", "32"],
    "fcn8s": ["--backbone", "resnet18", "--output-stride", "32"],
    "unet": ["--model-opt", "base_channels=8"],
    "deeplab_v2": ["--backbone", "resnet18"],
    "deeplab_v3": ["--backbone", "resnet18"],
    "deeplab_v3plus": ["--backbone", "resnet18"],
    "refinenet": ["--backbone", "resnet18", "--model-opt", "channels=32"],
    "pspnet": ["--backbone", "resnet18"],
    "attention_to_scale": ["--backbone", "resnet18", "--model-opt", "base=deeplab_v2"],
}


@pytest.mark.parametrize("name", atrous.list_models())
def test_train_five_iterations_from_the_command_line(name, tmp_path, capsys):
    out = tmp_path / name
    code = main(["train", "--model", name, *SMALL_FLAGS.get(name, []), "--dataset", "synthetic", "--iters", "5",
                 "--batch-size", "2", "--crop-size", "64", "--synthetic-size", "64", "--synthetic-length", "4",
                 "--eval-split", "", "--out", str(out), "--no-progress"])
    assert code == 0, capsys.readouterr().err
    assert (out / "model.safetensors").is_file()
    events = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert events[-1]["event"] == "finished" and events[-1]["step"] == 5
    assert all(math.isfinite(e["loss"]) for e in events if "loss" in e)  # neither NaN nor infinite
