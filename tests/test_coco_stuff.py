"""COCO-Stuff 164k (images/ + stuffthingmaps PNGs) on tiny fixture trees."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from atrous.data import DataError, build_dataset
from atrous.data.coco_stuff import COCOStuff

from .dataset_trees import write_jpeg, write_png

ALL_VALUES = np.append(np.arange(182), [255, 255]).astype(np.uint8).reshape(8, 23)  # every value once, and 255


def mmseg_table() -> dict[int, int]:
    """mmsegmentation's clsID_to_trID (coco_stuff164k.py) as runs of consecutive ids, typed from it."""
    runs = [(0, 10, 0), (12, 24, 11), (26, 27, 24), (30, 43, 26), (45, 64, 40), (66, 66, 60), (69, 69, 61),
            (71, 81, 62), (83, 89, 73), (91, 181, 80)]
    return {value: start_class + value - first for first, last, start_class in runs for value in range(first, last + 1)}


def make_coco(root: Path, split: str, stems: list[str], labels: np.ndarray = ALL_VALUES,
              label_base: str = "annotations") -> None:
    for n, stem in enumerate(stems):
        write_jpeg(root / "images" / split / f"{stem}.jpg", *labels.shape, seed=n)
        write_png(root / label_base / split / f"{stem}.png", labels)


def test_coco_stuff_maps_182_ids_to_171_classes_value_by_value(tmp_path):
    make_coco(tmp_path, "train2017", ["000000000025", "000000000009"])
    make_coco(tmp_path, "val2017", ["000000000139"])
    ds = build_dataset("coco_stuff", "train", data_root=str(tmp_path))
    assert isinstance(ds, COCOStuff) and len(ds) == 2 and ds.info.num_classes == 171
    assert [Path(image).stem for image, _ in ds.items] == ["000000000009", "000000000025"]
    table = mmseg_table()
    assert len(table) == 171 and sorted(table.values()) == list(range(171))
    expected = np.array([table.get(int(v), 255) for v in ALL_VALUES.ravel()]).reshape(ALL_VALUES.shape)
    image, mask = ds[0]
    assert image.shape == (3, 8, 23) and torch.equal(mask, torch.from_numpy(expected))
    void = sorted({int(v) for v, e in zip(ALL_VALUES.ravel(), expected.ravel(), strict=True) if e == 255})
    assert void == [11, 25, 28, 29, 44, 65, 67, 68, 70, 82, 90, 255]  # street sign, hat, ..., hair brush; unlabelled
    names = ds.info.class_names
    assert (names[table[0]], names[table[12]], names[table[89]], names[table[91]], names[table[181]]) == (
        "person", "stop sign", "toothbrush", "banner", "wood")
    assert len(build_dataset("coco_stuff", "val", data_root=str(tmp_path))) == 1


def test_coco_stuff_release_folder_and_errors(tmp_path):
    with pytest.raises(DataError, match="COCO-Stuff folder not found"):
        COCOStuff(str(tmp_path / "nowhere"))
    make_coco(tmp_path, "val2017", ["a", "b"], label_base="stuffthingmaps_trainval2017")
    assert Path(COCOStuff(str(tmp_path), "val").items[0][1]).parent.parent.name == "stuffthingmaps_trainval2017"
    with pytest.raises(DataError, match="coco_stuff has no 'test' split"):
        COCOStuff(str(tmp_path), "test")
    with pytest.raises(DataError, match=r"COCO-Stuff image folder not found: .*train2017"):
        COCOStuff(str(tmp_path), "train")
    bad = ALL_VALUES.copy()
    bad[0, 0] = 182
    write_png(tmp_path / "stuffthingmaps_trainval2017" / "val2017" / "a.png", bad)
    with pytest.raises(DataError, match=r"a\.png has values \[182\] outside COCO-Stuff's 0\.\.181 and 255"):
        COCOStuff(str(tmp_path), "val")[0]
    write_png(tmp_path / "stuffthingmaps_trainval2017" / "val2017" / "a.png", ALL_VALUES[:4])
    with pytest.raises(DataError, match=r"a\.png is 23x4 but its image is 23x8"):
        COCOStuff(str(tmp_path), "val")[0]
    (tmp_path / "stuffthingmaps_trainval2017" / "val2017" / "b.png").unlink()
    with pytest.raises(DataError, match=r"COCO-Stuff label not found: .*b\.png"):
        COCOStuff(str(tmp_path), "val")
