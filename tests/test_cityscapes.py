"""Cityscapes in its native layout, on a tiny fixture tree; the labelId -> trainId table."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from atrous.data import CITYSCAPES_INFO, Cityscapes, DataError, build_dataset
from atrous.data.cityscapes import LABEL_ID_TO_TRAIN_ID

# cityscapesScripts helpers/labels.py, typed again by hand: labelId -> trainId of the 19
# evaluated classes; every other labelId (0-6, 9, 10, 14-16, 18, 29, 30) is void
TRAIN_IDS = {7: 0, 8: 1, 11: 2, 12: 3, 13: 4, 17: 5, 19: 6, 20: 7, 21: 8, 22: 9, 23: 10, 24: 11, 25: 12,
             26: 13, 27: 14, 28: 15, 31: 16, 32: 17, 33: 18}
NAMES = ("road", "sidewalk", "building", "wall", "fence", "pole", "traffic light", "traffic sign", "vegetation",
         "terrain", "sky", "person", "rider", "car", "truck", "bus", "train", "motorcycle", "bicycle")
COLOURS = ((128, 64, 128), (244, 35, 232), (70, 70, 70), (102, 102, 156), (190, 153, 153), (153, 153, 153),
           (250, 170, 30), (220, 220, 0), (107, 142, 35), (152, 251, 152), (70, 130, 180), (220, 20, 60),
           (255, 0, 0), (0, 0, 142), (0, 0, 70), (0, 60, 100), (0, 80, 100), (0, 0, 230), (119, 11, 32))


def label_ids(height: int = 16, width: int = 40) -> np.ndarray:
    """Every labelId 0..33 once in the first row (mapped and unmapped), road elsewhere."""
    ids = np.full((height, width), 7, np.uint8)
    ids[0, :34] = np.arange(34)
    ids[5:9, 10:30] = 26  # a car
    return ids


def make_cityscapes(root: Path, frames: dict[str, list[str]], size: tuple[int, int] = (16, 40)) -> None:
    """root/leftImg8bit/<split>/<city>/*_leftImg8bit.png and gtFine/.../*_gtFine_labelIds.png."""
    for key, names in frames.items():
        split, city = key.split("/")
        for n, stem in enumerate(names):
            image_dir, label_dir = root / "leftImg8bit" / split / city, root / "gtFine" / split / city
            image_dir.mkdir(parents=True, exist_ok=True)
            label_dir.mkdir(parents=True, exist_ok=True)
            pixels = np.random.default_rng(n).integers(0, 255, (*size, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(image_dir / f"{stem}_leftImg8bit.png")
            Image.fromarray(label_ids(*size)).save(label_dir / f"{stem}_gtFine_labelIds.png")
            # the other files of gtFine, which must not be taken for labels
            Image.fromarray(np.zeros((*size, 3), np.uint8)).save(label_dir / f"{stem}_gtFine_color.png")


FRAMES = {"train/zurich": ["zurich_000000_000019"], "train/aachen": ["aachen_000001_000019", "aachen_000000_000019"],
          "val/lindau": ["lindau_000000_000019"]}


def test_label_id_to_train_id_table_matches_the_official_one():
    assert [int(LABEL_ID_TO_TRAIN_ID[i]) for i in range(34)] == [TRAIN_IDS.get(i, 255) for i in range(34)]
    assert (LABEL_ID_TO_TRAIN_ID[34:] == 255).all()
    assert CITYSCAPES_INFO.class_names == NAMES and CITYSCAPES_INFO.palette == COLOURS


def test_cityscapes_layout_and_mapping(tmp_path):
    make_cityscapes(tmp_path, FRAMES)
    ds = build_dataset("cityscapes", "train", data_root=str(tmp_path))
    assert isinstance(ds, Cityscapes) and len(ds) == 3
    stems = [Path(image).name for image, _ in ds.items]  # sorted by city, then frame
    assert stems == ["aachen_000000_000019_leftImg8bit.png", "aachen_000001_000019_leftImg8bit.png",
                     "zurich_000000_000019_leftImg8bit.png"]
    assert all(label.endswith("_gtFine_labelIds.png") for _, label in ds.items)
    image, mask = ds[0]
    assert image.shape == (3, 16, 40) and mask.dtype == torch.int64
    expected = np.zeros((16, 40), np.int64)  # road
    expected[0, :34] = [TRAIN_IDS.get(i, 255) for i in range(34)]
    expected[5:9, 10:30] = 13  # car
    assert torch.equal(mask, torch.from_numpy(expected))
    assert [m.tolist() for m in ds.labels()] == [expected.tolist()] * 3
    assert len(build_dataset("cityscapes", "val", data_root=str(tmp_path))) == 1


def test_cityscapes_errors(tmp_path):
    with pytest.raises(DataError, match="not found"):
        Cityscapes(str(tmp_path / "nowhere"))
    make_cityscapes(tmp_path, FRAMES)
    with pytest.raises(DataError, match="test.*labels are not public"):
        Cityscapes(str(tmp_path), "test")
    label = tmp_path / "gtFine/train/zurich/zurich_000000_000019_gtFine_labelIds.png"
    bad = label_ids()
    bad[3, 3] = 40
    Image.fromarray(bad).save(label)
    with pytest.raises(DataError, match=r"zurich_000000_000019_gtFine_labelIds\.png has values \[40\]"):
        Cityscapes(str(tmp_path), "train")[2]
    Image.fromarray(label_ids(18, 40)).save(label)
    with pytest.raises(DataError, match=r"labelIds\.png is 40x18 but its image is 40x16"):
        Cityscapes(str(tmp_path), "train")[2]
    label.unlink()
    with pytest.raises(DataError, match=r"zurich_000000_000019_leftImg8bit\.png has no label file"):
        Cityscapes(str(tmp_path), "train")
    with pytest.raises(DataError, match=r"image folder not found: .*leftImg8bit/leftImg8bit/val"):
        Cityscapes(str(tmp_path / "leftImg8bit"), "val")  # --data-root one level too deep
    shutil.rmtree(tmp_path / "gtFine" / "val")
    with pytest.raises(DataError, match=r"label folder not found: .*gtFine/val"):
        Cityscapes(str(tmp_path), "val")


def test_trains_with_class_weights_and_evaluates_through_the_cli(tmp_path, capsys):
    """The engine end to end on the fixture: --class-weights reads the decoded labels
    (labelIds mapped to trainIds), eval scores the val split at full size."""
    from atrous.cli import main
    from atrous.data.weights import median_frequency_weights

    from .conftest import tiny_config

    make_cityscapes(tmp_path / "data", FRAMES)
    from atrous.training.trainer import Trainer

    cfg = tiny_config(tmp_path / "run", dataset="cityscapes", data_root=str(tmp_path / "data"), crop_size=32,
                      iters=2, class_weights="median_frequency")
    trainer = Trainer(cfg)
    # road 7, car 26 and one pixel of each other mapped id per image: weights from trainIds
    expected = median_frequency_weights([label for label in Cityscapes(str(tmp_path / "data")).labels()], 19)
    assert torch.allclose(trainer.class_weights.cpu(), expected)
    assert expected[13] > 0 and expected[0] > 0 and expected[0] < expected[13]  # road is commoner than car
    trainer.run()
    code = main(["eval", "--checkpoint", str(tmp_path / "run" / "model.safetensors"), "--dataset", "cityscapes",
                 "--data-root", str(tmp_path / "data"), "--json", str(tmp_path / "val.json"), "--no-progress"])
    assert code == 0
    metrics = json.loads((tmp_path / "val.json").read_text())
    assert metrics["images"] == 1 and len(metrics["per_class_iou"]) == 19
    assert metrics["class_names"] == list(NAMES)
    code = main(["eval", "--checkpoint", str(tmp_path / "run" / "model.safetensors"), "--dataset", "cityscapes",
                 "--data-root", str(tmp_path / "data"), "--split", "test"])
    assert code == 2 and "labels are not public" in capsys.readouterr().err
