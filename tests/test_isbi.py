"""The isbi2012 dataset: the real slices (skipped when ../shared/data is absent) and a tiny
synthetic copy of the layout."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from atrous.data import DATASETS, DataError, build_dataset

from .conftest import SHARED_DATA


@pytest.fixture
def isbi_root() -> Path:
    root = SHARED_DATA / "isbi2012"
    if not (root / "label" / "29.png").is_file():
        pytest.skip(f"ISBI 2012 not found at {root} (the shared data folder is absent)")
    return root


def make_isbi(root: Path, slices: int = 30, size: int = 16) -> None:
    """`image/N.png` greyscale, `label/N.png` 0 (membrane) on a cross, 255 (cell) elsewhere."""
    (root / "image").mkdir(parents=True)
    (root / "label").mkdir()
    for n in range(slices):
        image = np.full((size, size), 10 * n % 256, np.uint8)
        label = np.full((size, size), 255, np.uint8)
        label[size // 2, :] = 0
        label[:, n % size] = 0
        Image.fromarray(image, "L").save(root / "image" / f"{n}.png")
        Image.fromarray(label, "L").save(root / "label" / f"{n}.png")


def test_real_slices(isbi_root: Path) -> None:
    train, val = build_dataset("isbi2012", "train", data_root=str(isbi_root)), build_dataset("isbi2012", "val")
    assert (len(train), len(val)) == (25, 5)
    assert val.items[0][0].endswith("25.png") and val.items[-1][0].endswith("29.png")
    image, mask = val[0]
    assert image.shape == (3, 512, 512) and image.dtype == torch.uint8
    assert torch.equal(image[0], image[1]) and torch.equal(image[0], image[2])  # greyscale as 3 channels
    assert mask.shape == (512, 512) and mask.dtype == torch.int64
    assert set(mask.unique().tolist()) == {0, 1}
    assert 0.6 < float((mask == 1).float().mean()) < 0.95  # most pixels are cell interior
    assert val.info.class_names == ("membrane", "cell")


def test_synthetic_copy(tmp_path: Path) -> None:
    make_isbi(tmp_path)
    assert "isbi2012" in DATASETS
    train = build_dataset("isbi2012", "train", data_root=str(tmp_path))
    val = build_dataset("isbi2012", "val", data_root=str(tmp_path))
    assert (len(train), len(val), len(build_dataset("isbi2012", "all", data_root=str(tmp_path)))) == (25, 5, 30)
    image, mask = val[1]  # slice 26
    assert image.shape == (3, 16, 16) and int(image[0, 0, 0]) == 10 * 26 % 256
    source = np.array(Image.open(tmp_path / "label" / "26.png"))
    assert torch.equal(mask, torch.from_numpy((source == 255).astype(np.int64)))  # 255 -> 1, 0 -> 0


def test_errors(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="ISBI 2012 folder not found"):
        build_dataset("isbi2012", "train", data_root=str(tmp_path / "nowhere"))
    make_isbi(tmp_path)
    with pytest.raises(DataError, match="no 'test' split"):
        build_dataset("isbi2012", "test", data_root=str(tmp_path))
    Image.fromarray(np.full((16, 16), 128, np.uint8), "L").save(tmp_path / "label" / "27.png")
    with pytest.raises(DataError, match=r"27\.png has values \[128\]"):
        build_dataset("isbi2012", "val", data_root=str(tmp_path))[2]
    (tmp_path / "image" / "3.png").unlink()
    with pytest.raises(DataError, match=r"3\.png"):
        build_dataset("isbi2012", "train", data_root=str(tmp_path))


def test_trains_through_the_engine(tmp_path: Path) -> None:
    """A few iterations of the original U-Net through Trainer and evaluate on the synthetic copy."""
    from atrous.training.trainer import train

    from .conftest import tiny_config

    make_isbi(tmp_path / "isbi", size=32)
    cfg = tiny_config(tmp_path / "run", model="unet", backbone=None, dataset="isbi2012",
                      data_root=str(tmp_path / "isbi"), crop_size=32, iters=2, eval_split="val",
                      model_options={"base_channels": 4, "batch_norm": True})
    result = train(cfg)
    assert result["val"]["images"] == 5 and len(result["val"]["per_class_iou"]) == 2
