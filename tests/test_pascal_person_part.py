"""PASCAL-Person-Part (DeepLab's release: pascal_person_part_gt PNGs and list files, VOC images)
on tiny fixture trees."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from atrous.data import DataError, build_dataset
from atrous.data.pascal_person_part import PascalPersonPart

from .dataset_trees import write_jpeg, write_png, write_recipe_and_train


def part_labels(seed: int) -> np.ndarray:
    """0 background, the six parts, a void border where the release has one."""
    labels = np.zeros((18, 14), np.uint8)
    for part in range(1, 7):
        labels[part * 2: part * 2 + 2, 3:11] = part
    labels[1, :] = 255
    labels[16:, :] = np.random.default_rng(seed).integers(0, 7)
    return labels


def make_person_part(root: Path, splits: dict[str, list[str]], id_lists: bool = False,
                     voc_year: str = "VOC2010") -> dict[str, np.ndarray]:
    lists = root / "pascal_person_part" / "pascal_person_part_trainval_list"
    lists.mkdir(parents=True)
    labels = {}
    for split, ids in splits.items():
        lines = "".join(f"/JPEGImages/{i}.jpg /SegmentationPart/{i}.png\n" for i in ids)
        (lists / f"{split}.txt").write_text(lines)
        if id_lists:
            (lists / f"{split}_id.txt").write_text("".join(f"{i}\n" for i in reversed(ids)))
        for n, image_id in enumerate(ids):
            labels[image_id] = part_labels(len(labels))
            write_jpeg(root / "VOCdevkit" / voc_year / "JPEGImages" / f"{image_id}.jpg", 18, 14, seed=n)
            write_png(root / "pascal_person_part" / "pascal_person_part_gt" / f"{image_id}.png", labels[image_id])
    return labels


def test_person_part_reads_the_release_lists_and_labels(tmp_path):
    labels = make_person_part(tmp_path, {"train": ["2008_000003", "2008_000008"], "val": ["2008_000026"]})
    ds = build_dataset("pascal_person_part", "train", data_root=str(tmp_path))
    assert isinstance(ds, PascalPersonPart) and len(ds) == 2
    assert ds.info.class_names == ("background", "head", "torso", "upper arms", "lower arms", "upper legs",
                                   "lower legs")
    for index, image_id in enumerate(["2008_000003", "2008_000008"]):
        image, mask = ds[index]
        assert image.shape == (3, 18, 14)
        assert torch.equal(mask, torch.from_numpy(labels[image_id].astype(np.int64)))
        assert (mask == 255).sum() == 14  # the void row stays void
    for split in ("val", "test"):  # the papers' test set is the release's val list
        ds = build_dataset("pascal_person_part", split, data_root=str(tmp_path))
        assert ds.split == "val" and [Path(p).name for p, _ in ds.items] == ["2008_000026.jpg"]
    # --data-root at the release folder, the VOC images found beside it
    assert PascalPersonPart(str(tmp_path / "pascal_person_part"), "val").items == ds.items


def test_person_part_id_lists_and_voc2012_images(tmp_path):
    make_person_part(tmp_path, {"train": ["a", "b", "c"]}, id_lists=True, voc_year="VOC2012")
    ds = PascalPersonPart(str(tmp_path), "train")
    assert [Path(label).stem for _, label in ds.items] == ["c", "b", "a"]  # train_id.txt's order
    assert Path(ds.items[0][0]).parent == tmp_path / "VOCdevkit" / "VOC2012" / "JPEGImages"


def test_person_part_errors_name_the_file(tmp_path):
    with pytest.raises(DataError, match="not found"):
        PascalPersonPart(str(tmp_path / "nowhere"))
    make_person_part(tmp_path, {"train": ["a", "b"], "val": ["c"]})
    with pytest.raises(DataError, match="pascal_person_part has no 'trainval' split"):
        PascalPersonPart(str(tmp_path), "trainval")
    gt = tmp_path / "pascal_person_part" / "pascal_person_part_gt"
    (gt / "b.png").unlink()
    with pytest.raises(DataError, match=r"PASCAL-Person-Part file not found: .*b\.png"):
        PascalPersonPart(str(tmp_path), "train")
    bad = part_labels(0)
    bad[5, 5] = 7
    write_png(gt / "c.png", bad)
    with pytest.raises(DataError, match=r"c\.png has label values \[7\] outside 0\.\.6"):
        PascalPersonPart(str(tmp_path), "val")[0]
    write_png(gt / "c.png", part_labels(0)[:9])
    with pytest.raises(DataError, match=r"c\.png is 14x9 but its image is 14x18"):
        PascalPersonPart(str(tmp_path), "val")[0]
    (tmp_path / "pascal_person_part" / "pascal_person_part_trainval_list" / "val.txt").unlink()
    with pytest.raises(DataError, match=r"split file not found: .*val\.txt"):
        PascalPersonPart(str(tmp_path), "val")
    gt.rename(tmp_path / "gt")
    with pytest.raises(DataError, match="PASCAL-Person-Part labels not found.*pascal_person_part_gt"):
        PascalPersonPart(str(tmp_path), "train")


@pytest.mark.parametrize("recipe", ["pascal_person_part/deeplab_v2_resnet101",
                                    "pascal_person_part/attention_to_scale_vgg16"])
def test_person_part_recipe_starts_on_a_fixture_tree(tmp_path, recipe):
    make_person_part(tmp_path / "data", {"train": ["a", "b"], "val": ["c"]})
    write_recipe_and_train(recipe, tmp_path / "data", tmp_path)
