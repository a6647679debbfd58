"""ADE20K (ADEChallengeData2016) in its native layout, on a tiny fixture tree."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from atrous.data import ADE20K, ADE20K_INFO, DataError, build_dataset


def make_ade(root: Path, split: str, stems: list[str], labels: np.ndarray) -> None:
    for n, stem in enumerate(stems):
        image_dir = root / "ADEChallengeData2016" / "images" / split
        label_dir = root / "ADEChallengeData2016" / "annotations" / split
        image_dir.mkdir(parents=True, exist_ok=True)
        label_dir.mkdir(parents=True, exist_ok=True)
        pixels = np.random.default_rng(n).integers(0, 255, (*labels.shape, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(image_dir / f"{stem}.jpg", quality=95)
        Image.fromarray(labels).save(label_dir / f"{stem}.png")


def source_labels() -> np.ndarray:
    labels = np.zeros((12, 20), np.uint8)  # 0: "other objects"
    labels[2:6, 2:8] = 1  # wall
    labels[6:10, 2:8] = 13  # person
    labels[2:10, 10:18] = 150  # flag
    return labels


def test_ade20k_info_hand_typed():
    info = ADE20K_INFO
    assert info.num_classes == 150 and info.ignore_index == 255
    assert info.class_names[:4] == ("wall", "building", "sky", "floor")
    assert info.class_names[12] == "person" and info.class_names[-1] == "flag"
    assert info.extra["objectinfo150"][12] == "person, individual, someone, somebody, mortal, soul"
    assert info.palette[:3] == ((120, 120, 120), (180, 120, 120), (6, 230, 230))
    assert info.palette[12] == (150, 5, 61) and info.palette[-1] == (92, 0, 255)


def test_ade20k_maps_k_to_k_minus_1_and_0_to_void(tmp_path):
    make_ade(tmp_path, "training", ["ADE_train_00000002", "ADE_train_00000001"], source_labels())
    make_ade(tmp_path, "validation", ["ADE_val_00000001"], source_labels())
    ds = build_dataset("ade20k", "train", data_root=str(tmp_path))
    assert isinstance(ds, ADE20K) and len(ds) == 2
    assert [Path(image).name for image, _ in ds.items] == ["ADE_train_00000001.jpg", "ADE_train_00000002.jpg"]
    image, mask = ds[0]
    assert image.shape == (3, 12, 20)
    expected = np.full((12, 20), 255, np.int64)
    expected[2:6, 2:8] = 0
    expected[6:10, 2:8] = 12
    expected[2:10, 10:18] = 149
    assert torch.equal(mask, torch.from_numpy(expected))
    assert [m.tolist() for m in ds.labels()] == [expected.tolist()] * 2
    val = ADE20K(str(tmp_path / "ADEChallengeData2016"), "val")  # --data-root at the folder itself
    assert [Path(label).name for _, label in val.items] == ["ADE_val_00000001.png"]


def test_ade20k_errors(tmp_path):
    with pytest.raises(DataError, match="not found"):
        ADE20K(str(tmp_path / "nowhere"))
    with pytest.raises(DataError, match="ADEChallengeData2016"):
        ADE20K(str(tmp_path))
    labels = source_labels()
    labels[0, 0] = 151
    make_ade(tmp_path, "training", ["ADE_train_00000001"], labels)
    with pytest.raises(DataError, match="ade20k has no 'test' split"):
        ADE20K(str(tmp_path), "test")
    with pytest.raises(DataError, match=r"ADE_train_00000001\.png has values \[151\] outside ADE20K's 0\.\.150"):
        ADE20K(str(tmp_path), "train")[0]
    with pytest.raises(DataError, match="validation"):
        ADE20K(str(tmp_path), "val")
    (tmp_path / "ADEChallengeData2016/annotations/training/ADE_train_00000001.png").unlink()
    with pytest.raises(DataError, match=r"annotation not found: .*ADE_train_00000001\.png"):
        ADE20K(str(tmp_path), "train")
