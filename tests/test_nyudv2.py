"""NYUDv2 (nyu_depth_v2_labeled.mat as MATLAB v7.3 stores it, splits.mat, classMapping40.mat)
on a tiny fixture tree: the 894 -> 40 mapping value by value, depth as a fourth band in metres,
MATLAB's column-major layout undone."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from atrous.data import DataError, build_dataset
from atrous.data.nyudv2 import NYUDv2

from .dataset_trees import write_recipe_and_train

h5py = pytest.importorskip("h5py", reason="h5py (the datasets extra) reads MATLAB v7.3 files")
pytest.importorskip("scipy", reason="scipy (the datasets extra) reads splits.mat and classMapping40.mat")

HEIGHT, WIDTH, FRAMES = 30, 30, 4
RNG = np.random.default_rng(0)
MAP_CLASS = RNG.integers(1, 41, 894)  # raw label k -> 1..40 (mapClass[k - 1])
RAW = [np.append(np.arange(895), np.zeros(5)).astype(np.uint16).reshape(HEIGHT, WIDTH) for _ in range(FRAMES)]
RGB = [RNG.integers(0, 256, (HEIGHT, WIDTH, 3), dtype=np.uint8) for _ in range(FRAMES)]
DEPTH = [RNG.uniform(0.5, 9.5, (HEIGHT, WIDTH)).astype(np.float32) for _ in range(FRAMES)]


def write_labeled_mat(path: Path, rgb=RGB, depth=DEPTH, raw=RAW) -> None:
    """MATLAB v7.3 stores a 480 x 640 x 3 x N array column-major: h5py reads it N x 3 x 640 x 480."""
    with h5py.File(path, "w") as mat:
        mat["images"] = np.stack([image.transpose(2, 1, 0) for image in rgb])  # (N, 3, W, H)
        mat["depths"] = np.stack([d.T for d in depth])  # (N, W, H)
        mat["labels"] = np.stack([r.T for r in raw])  # (N, W, H)
        mat["rawDepths"] = np.stack([np.where(d > 9.0, 0, d).T for d in depth])  # the sensor's holes: 0


def make_nyud(root: Path, train=(1, 3), test=(2,)) -> None:
    from scipy.io import savemat

    root.mkdir(parents=True, exist_ok=True)
    write_labeled_mat(root / "nyu_depth_v2_labeled.mat")
    savemat(str(root / "splits.mat"), {"trainNdxs": np.array(train, float)[:, None],
                                       "testNdxs": np.array(test, float)[:, None]})
    names = np.array([f"class{k}" for k in range(1, 41)], dtype=object)[None]
    savemat(str(root / "classMapping40.mat"), {"mapClass": MAP_CLASS[None].astype(float), "className": names})


def test_nyudv2_rgbd_bands_and_the_40_classes_value_by_value(tmp_path):
    make_nyud(tmp_path)
    ds = build_dataset("nyudv2", "train", data_root=str(tmp_path))
    assert isinstance(ds, NYUDv2) and len(ds) == 2 and ds.info.num_classes == 40
    assert ds.info.class_names[:3] == ("wall", "floor", "cabinet") and ds.info.class_names[-1] == "otherprop"
    for index, frame in enumerate((0, 2)):  # splits.mat is 1-based
        image, mask = ds[index]
        assert image.dtype == torch.float32 and image.shape == (4, HEIGHT, WIDTH)
        assert torch.equal(image[:3], torch.from_numpy(RGB[frame]).permute(2, 0, 1).float())  # rows are rows
        assert torch.equal(image[3], torch.from_numpy(DEPTH[frame]))  # metres, as stored
        raw = RAW[frame].astype(np.int64)
        expected = np.where(raw == 0, 255, MAP_CLASS[np.maximum(raw, 1) - 1] - 1)
        assert torch.equal(mask, torch.from_numpy(expected))
    assert len(ds.info.extra["mean"]) == len(ds.info.extra["std"]) == 4
    assert [m.tolist() for m in ds.labels()][1] == mask.tolist()
    rgb = build_dataset("nyudv2_rgb", "val", data_root=str(tmp_path))  # val = the 654 test frames
    image, _ = rgb[0]
    assert rgb.split == "test" and image.dtype == torch.uint8
    assert torch.equal(image, torch.from_numpy(RGB[1]).permute(2, 0, 1))


def test_nyudv2_hha_bands_are_the_depth_of_the_same_frame_encoded(tmp_path):
    from atrous.data.hha import NYU_COLOR_CAMERA, hha

    make_nyud(tmp_path)
    image, mask = build_dataset("nyudv2_hha", "test", data_root=str(tmp_path))[0]
    expected = hha(DEPTH[1], NYU_COLOR_CAMERA, missing=DEPTH[1] > 9.0)  # frame 2, its raw holes
    assert image.dtype == torch.uint8 and torch.equal(image, torch.from_numpy(expected))
    both, same_mask = build_dataset("nyudv2_rgbhha", "test", data_root=str(tmp_path))[0]
    assert both.shape == (6, HEIGHT, WIDTH) and both.dtype == torch.float32 and torch.equal(mask, same_mask)
    assert torch.equal(both[:3], torch.from_numpy(RGB[1]).permute(2, 0, 1).float())
    assert torch.equal(both[3:], image.float())
    assert (DEPTH[1] > 9.0).any()  # the fixture has holes to leave out


def test_nyudv2_bad_data_is_one_line_naming_the_file(tmp_path):
    with pytest.raises(DataError, match="NYUDv2 folder not found"):
        NYUDv2(str(tmp_path / "nowhere"))
    make_nyud(tmp_path, train=(1, 7))
    with pytest.raises(DataError, match=r"splits\.mat: frame 7 is not among the 4 frames"):
        NYUDv2(str(tmp_path), "train")
    with pytest.raises(DataError, match="nyudv2 has no 'trainval' split"):
        NYUDv2(str(tmp_path), "trainval")
    depth = [d[:, :20] for d in DEPTH]  # a depth map of another size
    write_labeled_mat(tmp_path / "nyu_depth_v2_labeled.mat", depth=depth)
    with pytest.raises(DataError, match=r"nyu_depth_v2_labeled\.mat: images .* depths .* do not fit"):
        NYUDv2(str(tmp_path), "test")
    raw = [r.copy() for r in RAW]
    raw[1][0, 0] = 895  # a label outside the 894
    write_labeled_mat(tmp_path / "nyu_depth_v2_labeled.mat", raw=raw)
    with pytest.raises(DataError, match=r"labeled\.mat frame 2: labels \[895\] outside the raw 0\.\.894"):
        NYUDv2(str(tmp_path), "test")[0]
    from scipy.io import savemat

    savemat(str(tmp_path / "classMapping40.mat"), {"mapClass": MAP_CLASS[None, :100].astype(float)})
    with pytest.raises(DataError, match=r"classMapping40\.mat: mapClass must map the 894 raw labels"):
        NYUDv2(str(tmp_path), "test")
    (tmp_path / "nyu_depth_v2_labeled.mat").unlink()
    with pytest.raises(DataError, match=r"NYUDv2 file not found: .*nyu_depth_v2_labeled\.mat"):
        NYUDv2(str(tmp_path), "test")


@pytest.mark.parametrize("recipe", ["nyudv2/fcn32s_vgg16_rgbd", "nyudv2/fcn32s_vgg16_hha", "nyudv2/refinenet_resnet152"])
def test_nyudv2_recipe_starts_on_a_fixture_tree(tmp_path, recipe):
    make_nyud(tmp_path / "data")
    write_recipe_and_train(recipe, tmp_path / "data", tmp_path)
