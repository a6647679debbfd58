"""Shared fixtures: a tiny trained checkpoint, a small random one with varied outputs, the
real data folder."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"


def varied_segnet(num_classes: int):
    """A small random SegNet-Basic (seed 0, He-normal weights, zero biases) whose outputs are
    not one constant class."""
    import torch

    import atrous

    torch.manual_seed(0)
    model = atrous.create_model("segnet_basic", num_classes, channels=8, kernel_size=3)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if param.dim() == 4:
                torch.nn.init.kaiming_normal_(param)
            elif name.endswith("bias"):
                param.zero_()
    return model


def random_folder_dataset(root: Path, count: int, side: int = 32) -> list[int]:
    """A `folder` dataset of `count` random RGB images and two-class masks under `root`;
    returns epoch 0's order of seed 0 (atrous.training.parts.TrainStream), to find which
    image a given step reads."""
    import json

    import numpy as np
    from PIL import Image

    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    rng = np.random.default_rng(0)
    for i in range(count):
        Image.fromarray(rng.integers(0, 255, (side, side, 3), dtype=np.uint8)).save(root / "images" / f"{i}.png")
        Image.fromarray(rng.integers(0, 2, (side, side), dtype=np.uint8)).save(root / "masks" / f"{i}.png")
    (root / "classes.json").write_text(json.dumps({"classes": ["a", "b"]}))
    return [int(i) for i in np.random.default_rng([0, 0, 0]).permutation(count)]


def tiny_config(out: Path, **overrides):
    from atrous.training.trainer import TrainConfig

    values = dict(
        model="deeplab_v3plus",
        backbone="resnet18",
        dataset="synthetic",
        out=str(out),
        iters=4,
        batch_size=2,
        crop_size=64,
        synthetic_size=64,
        synthetic_length=8,
        optimizer="adamw",
        eval_split=None,
        progress=False,
        checkpoint_every=2,
    )
    values.update(overrides)
    return TrainConfig(**values)


def small_config(out: Path, **overrides):
    """DeepLab v3+ ResNet-18 on 32x32 synthetic scenes, batch 4, SGD: two quick iterations."""
    from atrous.training.trainer import TrainConfig

    values = dict(model="deeplab_v3plus", backbone="resnet18", dataset="synthetic", synthetic_size=32,
                  synthetic_length=8, crop_size=32, batch_size=4, optimizer="sgd", lr=0.01, iters=2,
                  eval_split=None, progress=False, checkpoint_every=100, out=str(out))
    values.update(overrides)
    return TrainConfig(**values)


@pytest.fixture(scope="module")
def small_unet():
    """An untrained 3-class U-Net of 8 base channels with class names and a normalisation:
    what the export tests export (ONNX, OpenVINO) and compare against."""
    import torch

    import atrous

    torch.manual_seed(0)
    model = atrous.create_model("unet", 3, base_channels=8).eval()
    model.meta = {"class_names": ["a", "b", "c"], "mean": [0.5, 0.4, 0.3], "std": [0.2, 0.25, 0.3]}
    return model


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory) -> Path:
    """A deeplab_v3plus/resnet18 trained for a few iterations on 64x64 synthetic scenes."""
    from atrous.training.trainer import train

    out = tmp_path_factory.mktemp("tiny")
    train(tiny_config(out))
    return out / "model.safetensors"


@pytest.fixture(scope="session")
def demo_run(tmp_path_factory) -> tuple[Path, str]:
    """`atrous demo` at 40 iterations instead of 220: (its output folder, what it printed). A
    model that has learned (held-out mIoU about 0.5), for tests that need labels that vary."""
    import contextlib
    import io

    from atrous.cli import main

    out = tmp_path_factory.mktemp("demo") / "demo"
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        assert main(["demo", "--iters", "40", "--out", str(out), "--no-progress"]) == 0
    return out, printed.getvalue()


# the classes and colours of `varied_checkpoint`
CLASSES = ["sky", "road", "car", "tree", "sign"]
PALETTE = [[70, 130, 180], [128, 64, 128], [220, 20, 60], [107, 142, 35], [250, 170, 30]]


@pytest.fixture(scope="session")
def varied_checkpoint(tmp_path_factory) -> Path:
    """A small random SegNet-Basic whose five classes all occur on a scene (He-normal
    weights, zero biases): outputs that are not one constant class, in a 25 kB file."""

    import atrous

    model = varied_segnet(len(CLASSES))
    path = tmp_path_factory.mktemp("varied") / "varied.safetensors"
    atrous.save_checkpoint(model.eval(), str(path), class_names=CLASSES, palette=PALETTE,
                           mean=[0.45, 0.45, 0.45], std=[0.22, 0.22, 0.22])
    return path


@pytest.fixture(scope="session")
def camvid_root() -> Path:
    root = SHARED_DATA / "camvid"
    if not (root / "train.txt").is_file():
        pytest.skip(f"CamVid not found at {root} (the shared data folder is absent)")
    return root


def pytest_report_header(config):
    where = SHARED_DATA if os.path.isdir(SHARED_DATA) else "absent: real-data tests are skipped"
    return f"atrous shared data: {where}"
