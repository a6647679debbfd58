"""PASCAL-Context (VOC 2010 images + the release's trainval/*.mat LabelMaps) on tiny fixture trees."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from atrous.data import DataError, build_dataset
from atrous.data.pascal_context import PascalContext, PascalContext59, PascalContext459

from .dataset_trees import write_jpeg, write_recipe_and_train

pytest.importorskip("scipy", reason="scipy (the datasets extra) reads the release's .mat files")

# mmsegmentation's tools/dataset_converters/pascal_context.py `_mapping`, typed in its order (unsorted)
MMSEG_MAPPING = [0, 2, 259, 260, 415, 324, 9, 258, 144, 18, 19, 22, 23, 397, 25, 284, 158, 159, 416, 33, 162, 420,
                 454, 295, 296, 427, 44, 45, 46, 308, 59, 440, 445, 31, 232, 65, 354, 424, 68, 326, 72, 458, 34, 207,
                 80, 355, 85, 347, 220, 349, 360, 98, 187, 104, 105, 366, 189, 368, 113, 115]
# labels.txt of the release at a few of those numbers (the rest is written as "label<k>")
NAMES = {2: "aeroplane", 9: "bag", 18: "bed", 19: "bedclothes", 22: "bench", 23: "bicycle", 25: "bird", 31: "boat",
         33: "book", 34: "bottle", 44: "building", 45: "bus", 46: "cabinet", 59: "car", 65: "cat", 68: "ceiling",
         72: "chair", 80: "cloth", 85: "computer", 98: "cow", 104: "cup", 105: "curtain", 113: "dog", 115: "door",
         144: "fence", 158: "floor", 159: "flower", 162: "food", 187: "grass", 189: "ground", 207: "horse",
         220: "keyboard", 232: "light", 258: "motorbike", 259: "mountain", 260: "mouse", 284: "person", 295: "plate",
         296: "platform", 308: "pottedplant", 324: "road", 326: "rock", 347: "sheep", 349: "shelves", 354: "sidewalk",
         355: "sign", 360: "sky", 366: "snow", 368: "sofa", 397: "table", 415: "track", 416: "train", 420: "tree",
         424: "truck", 427: "tvmonitor", 440: "wall", 445: "water", 454: "window", 458: "wood"}
ALL_VALUES = np.arange(460, dtype=np.uint16).reshape(20, 23)  # every LabelMap value once


def write_label_map(path: Path, labels: np.ndarray) -> None:
    from scipy.io import savemat

    path.parent.mkdir(parents=True, exist_ok=True)
    savemat(str(path), {"LabelMap": labels.astype(np.uint16)})  # uint16, as the release stores it


def make_context(root: Path, splits: dict[str, list[str]], labels: np.ndarray = ALL_VALUES,
                 labels_txt: bool = True) -> None:
    voc = root / "VOCdevkit" / "VOC2010"
    (voc / "ImageSets" / "Main").mkdir(parents=True)
    for split, ids in splits.items():
        (voc / "ImageSets" / "Main" / f"{split}.txt").write_text("".join(f"{i}\n" for i in ids))
        for n, image_id in enumerate(ids):
            write_jpeg(voc / "JPEGImages" / f"{image_id}.jpg", *labels.shape, seed=n)
            write_label_map(root / "trainval" / f"{image_id}.mat", labels)
    if labels_txt:
        (root / "labels.txt").write_text("".join(f"{k}: {NAMES.get(k, f'label{k}')}\n" for k in range(1, 460)))


def test_context_60_maps_the_59_labels_in_ascending_order_and_the_rest_to_background(tmp_path):
    make_context(tmp_path, {"train": ["2008_000002", "2008_000003"], "val": ["2008_000007"]})
    ds = build_dataset("pascal_context", "train", data_root=str(tmp_path))
    assert isinstance(ds, PascalContext) and len(ds) == 2 and ds.info.num_classes == 60
    image, mask = ds[0]
    assert image.shape == (3, 20, 23) and mask.dtype == torch.int64
    ranks = {label: rank for rank, label in enumerate(sorted(MMSEG_MAPPING))}  # np.digitize over the sorted ids
    expected = np.array([ranks.get(int(v), 0) for v in ALL_VALUES.ravel()]).reshape(ALL_VALUES.shape)
    assert torch.equal(mask, torch.from_numpy(expected))
    assert sorted(np.unique(expected).tolist()) == list(range(60))
    assert ds.info.class_names[0] == "background"
    assert [ds.info.class_names[ranks[label]] for label in sorted(NAMES)] == [NAMES[k] for k in sorted(NAMES)]
    assert len(build_dataset("pascal_context", "val", data_root=str(tmp_path))) == 1
    for root in (tmp_path / "VOCdevkit", tmp_path / "VOCdevkit" / "VOC2010"):  # trainval/ found above VOC2010
        assert PascalContext(str(root), "val").items == build_dataset("pascal_context", "val",
                                                                       data_root=str(tmp_path)).items


def test_context_59_makes_background_void_and_459_keeps_every_label(tmp_path):
    make_context(tmp_path, {"train": ["a"], "val": ["b"]})
    ranks = {label: rank for rank, label in enumerate(sorted(MMSEG_MAPPING))}
    _, mask59 = build_dataset("pascal_context_59", "train", data_root=str(tmp_path))[0]
    expected59 = np.array([ranks[v] - 1 if v in ranks and v else 255 for v in ALL_VALUES.ravel().tolist()])
    assert torch.equal(mask59.ravel(), torch.from_numpy(expected59))
    assert isinstance(build_dataset("pascal_context_59", "val", data_root=str(tmp_path)), PascalContext59)
    full = build_dataset("pascal_context_459", "train", data_root=str(tmp_path))
    assert isinstance(full, PascalContext459) and full.info.num_classes == 460
    _, mask = full[0]
    values = ALL_VALUES.ravel().astype(np.int64)
    expected = np.where(values == 0, 255, np.where(values <= 255, values - 1, values))  # class 255 never carried
    assert torch.equal(mask.ravel(), torch.from_numpy(expected))
    names = full.info.class_names
    assert (names[1], names[254], names[255], names[256], names[459]) == (
        "aeroplane", "label255", "(void: unused index)", "label256", "label459")
    assert names[284] == "person"  # label 284, past the unused 255


def test_context_alternative_layouts(tmp_path):
    """trainval/ and labels.txt inside VOC2010, mmsegmentation's SegmentationContext lists."""
    make_context(tmp_path, {"train": ["a", "b"], "val": ["c"]})
    voc = tmp_path / "VOCdevkit" / "VOC2010"
    (tmp_path / "trainval").rename(voc / "trainval")
    (tmp_path / "labels.txt").rename(voc / "labels.txt")
    (voc / "ImageSets" / "SegmentationContext").mkdir()
    (voc / "ImageSets" / "SegmentationContext" / "train.txt").write_text("b\n")
    ds = PascalContext(str(tmp_path), "train")
    assert [Path(label) for _, label in ds.items] == [voc / "trainval" / "b.mat"]
    assert build_dataset("pascal_context_459", "val", data_root=str(voc)).info.class_names[1] == "aeroplane"


def test_context_errors_name_the_file(tmp_path):
    with pytest.raises(DataError, match="not found"):
        PascalContext(str(tmp_path / "nowhere"))
    make_context(tmp_path, {"train": ["a", "b"], "val": ["c"]}, labels_txt=False)
    with pytest.raises(DataError, match="pascal_context has no 'test' split"):
        PascalContext(str(tmp_path), "test")
    with pytest.raises(DataError, match="takes its class names from labels.txt"):
        PascalContext459(str(tmp_path), "train")
    (tmp_path / "labels.txt").write_text("".join(f"{k}: label{k}\n" for k in range(1, 460)))
    with pytest.raises(DataError, match=r"labels\.txt: label 2 is 'label2', PASCAL-Context's is 'aeroplane'"):
        PascalContext(str(tmp_path), "train")
    (tmp_path / "labels.txt").unlink()
    (tmp_path / "trainval" / "b.mat").unlink()
    with pytest.raises(DataError, match=r"b\.mat"):
        PascalContext(str(tmp_path), "train")
    bad = ALL_VALUES.copy()
    bad[0, 0] = 460
    write_label_map(tmp_path / "trainval" / "c.mat", bad)
    with pytest.raises(DataError, match=r"c\.mat has values \[460\] outside labels\.txt's 0\.\.459"):
        PascalContext(str(tmp_path), "val")[0]
    from scipy.io import savemat

    savemat(str(tmp_path / "trainval" / "c.mat"), {"Other": np.zeros((2, 2))})
    with pytest.raises(DataError, match=r"c\.mat holds no variable 'LabelMap'"):
        PascalContext(str(tmp_path), "val")[0]
    write_label_map(tmp_path / "trainval" / "c.mat", ALL_VALUES[:10])
    with pytest.raises(DataError, match=r"c\.mat is 23x10 but its image is 23x20"):
        PascalContext(str(tmp_path), "val")[0]
    (tmp_path / "trainval").rename(tmp_path / "labels")
    with pytest.raises(DataError, match="PASCAL-Context labels not found.*trainval"):
        PascalContext(str(tmp_path), "val")


@pytest.mark.parametrize("recipe", ["pascal_context/fcn8s_vgg16", "pascal_context/deeplab_v2_resnet101"])
def test_context_recipe_starts_on_a_fixture_tree(tmp_path, recipe):
    make_context(tmp_path / "data", {"train": ["a", "b"], "val": ["c"]})
    write_recipe_and_train(recipe, tmp_path / "data", tmp_path)
