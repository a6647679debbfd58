"""What the native-layout dataset tests share: writing images into fixture trees, and starting
a recipe of configs/ for one step on such a tree."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from .conftest import REPO

SMALL_BACKBONES = {"resnet152": "resnet18", "resnet101": "resnet18", "resnet50": "resnet18"}


def write_jpeg(path: Path, height: int, width: int, seed: int = 0) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(seed).integers(0, 255, (height, width, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path, quality=95)


def write_png(path: Path, labels: np.ndarray) -> None:
    """An 8-bit greyscale PNG of label values."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(labels.astype(np.uint8), mode="L").save(path)


def write_recipe_and_train(recipe: str, data_root: Path, tmp_path: Path, **overrides) -> dict:
    """configs/<recipe>.yaml with its size cut for a CPU step (one iteration, crop 32, batch 2,
    ResNet-18 for deeper ResNets and for FCN's VGG16, no pretrained download), run by `atrous train --config ...
    --data-root <tree>`; returns the recipe's values."""
    import yaml

    from atrous.cli import main

    values = yaml.safe_load((REPO / "configs" / f"{recipe}.yaml").read_text())
    small = dict(values, iters=1, batch_size=2, crop_size=32, workers=0, out=str(tmp_path / "run"),
                 eval_batch_size=1, checkpoint_every=1, **overrides)
    small.pop("pretrained_backbone", None)
    small.pop("data_root", None)
    if small.get("backbone") in SMALL_BACKBONES:
        small["backbone"] = SMALL_BACKBONES[small["backbone"]]
    if small["model"].startswith("fcn"):  # VGG16's fc6 alone is 103M weights: the ResNet FCN, same paths
        small["backbone"] = "resnet18"
    config = tmp_path / "recipe.yaml"
    config.write_text(yaml.safe_dump(small))
    code = main(["train", "--config", str(config), "--data-root", str(data_root), "--no-progress"])
    assert code == 0, recipe
    assert (tmp_path / "run" / "model.safetensors").is_file()
    return values
