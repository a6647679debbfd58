"""SUN RGB-D (SUNRGBD/ scene folders, the toolbox's SUNRGBDMeta.mat, SUNRGBD2Dseg.mat as MATLAB
v7.3 stores it, allsplit.mat) on a tiny fixture tree: the 37 classes value by value, the depth
PNG's rotated bits decoded by hand."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from atrous.data import DataError, build_dataset
from atrous.data.sun_rgbd import SunRGBD, decode_depth

from .dataset_trees import write_jpeg, write_recipe_and_train

h5py = pytest.importorskip("h5py", reason="h5py (the datasets extra) reads MATLAB v7.3 files")
pytest.importorskip("scipy", reason="scipy (the datasets extra) reads the toolbox's .mat files")

HEIGHT, WIDTH = 8, 5
SCENES = ["SUNRGBD/kv1/NYUdata/NYU0001", "SUNRGBD/kv2/kinect2data/000002_2014", "SUNRGBD/realsense/lg/2014_10_1"]
LABELS = [np.roll(np.append(np.arange(38), [0, 37]), k).reshape(HEIGHT, WIDTH).astype(np.uint16) for k in range(3)]
RAW_DEPTH = np.array([9872, 1, 16, 0] * 10, np.uint16).reshape(HEIGHT, WIDTH)
DEPTH_M = np.array([1.234, 8.0, 0.002, 0.0] * 10, np.float32).reshape(HEIGHT, WIDTH)  # by hand: 1 -> 8192 mm -> 8 m


def write_seg(path: Path, labels: list[np.ndarray]) -> None:
    """SUNRGBD2Dseg.mat as MATLAB v7.3 writes a struct array: seglabel a column of references."""
    with h5py.File(path, "w") as mat:
        refs = mat.create_group("#refs#")
        seglabel = mat.create_group("SUNRGBD2Dseg").create_dataset("seglabel", (len(labels), 1), dtype=h5py.ref_dtype)
        for n, label in enumerate(labels):
            seglabel[n, 0] = refs.create_dataset(f"l{n}", data=label.T).ref  # column-major: (W, H)


def make_sun(root: Path, train=(0, 2), test=(1,), depth: np.ndarray = RAW_DEPTH) -> None:
    from scipy.io import savemat

    meta = np.zeros((1, len(SCENES)), dtype=[("sequenceName", "O"), ("rgbname", "O"), ("depthname", "O")])
    for n, scene in enumerate(SCENES):
        meta[0, n] = (scene, f"img{n}.jpg", f"depth{n}.png")
        write_jpeg(root / scene / "image" / f"img{n}.jpg", HEIGHT, WIDTH, seed=n)
        (root / scene / "depth_bfx").mkdir(parents=True)
        Image.fromarray(depth).save(root / scene / "depth_bfx" / f"depth{n}.png")
    metadata = root / "SUNRGBDtoolbox" / "Metadata"
    metadata.mkdir(parents=True)
    savemat(str(metadata / "SUNRGBDMeta.mat"), {"SUNRGBDMeta": meta})
    write_seg(metadata / "SUNRGBD2Dseg.mat", LABELS)
    splits = root / "SUNRGBDtoolbox" / "traintestSUNRGBD"
    splits.mkdir(parents=True)
    authors = "/n/fs/sun3d/data/"  # the authors' paths, as allsplit.mat holds them
    savemat(str(splits / "allsplit.mat"), {
        "alltrain": np.array([authors + SCENES[n] for n in train], dtype=object)[None],
        "alltest": np.array([authors + SCENES[n] + "/" for n in test], dtype=object)[None]})


def test_depth_png_bits_are_rotated_right_by_3_and_capped_at_8_m():
    assert np.allclose(decode_depth(RAW_DEPTH), DEPTH_M)
    assert decode_depth(np.array([[7]], np.uint16))[0, 0] == pytest.approx(8.0)  # 7 -> 57344 mm, capped


def test_sun_rgbd_rgbd_bands_and_the_37_classes(tmp_path):
    make_sun(tmp_path)
    ds = build_dataset("sun_rgbd", "train", data_root=str(tmp_path))
    assert isinstance(ds, SunRGBD) and len(ds) == 2 and ds.info.num_classes == 37
    assert [Path(image).name for _, image, _ in ds.items] == ["img0.jpg", "img2.jpg"]
    image, mask = ds[1]
    assert image.dtype == torch.float32 and image.shape == (4, HEIGHT, WIDTH)
    assert torch.allclose(image[3], torch.from_numpy(DEPTH_M))
    from PIL import Image as PILImage

    rgb = np.array(PILImage.open(tmp_path / SCENES[2] / "image" / "img2.jpg"))
    assert torch.equal(image[:3], torch.from_numpy(rgb).permute(2, 0, 1).float())
    raw = LABELS[2].astype(np.int64)
    assert torch.equal(mask, torch.from_numpy(np.where(raw == 0, 255, raw - 1)))  # rows are rows (MATLAB's order undone)
    assert [m.tolist() for m in ds.labels()][1] == mask.tolist()
    test = build_dataset("sun_rgbd_rgb", "val", data_root=str(tmp_path))
    assert test.split == "test" and len(test) == 1 and test[0][0].dtype == torch.uint8


def test_sun_rgbd_bad_data_is_one_line_naming_the_file(tmp_path):
    with pytest.raises(DataError, match="SUN RGB-D folder not found"):
        SunRGBD(str(tmp_path / "nowhere"))
    make_sun(tmp_path, depth=RAW_DEPTH[:, :4])  # depth maps of another size
    with pytest.raises(DataError, match=r"depth .*depth0\.png is 4x8 but its image is 5x8"):
        SunRGBD(str(tmp_path), "train")[0]
    SunRGBD(str(tmp_path), "train", depth=False)[0]  # the photographs alone need no depth
    with pytest.raises(DataError, match="sun_rgbd has no 'trainval' split"):
        SunRGBD(str(tmp_path), "trainval")
    labels = [label.copy() for label in LABELS]
    labels[1][0, 0] = 38
    write_seg(tmp_path / "SUNRGBDtoolbox" / "Metadata" / "SUNRGBD2Dseg.mat", labels)
    with pytest.raises(DataError, match=r"SUNRGBD2Dseg\.mat frame 2: labels \[38\] outside 0\.\.37"):
        SunRGBD(str(tmp_path), "test", depth=False)[0]
    (tmp_path / SCENES[2] / "image" / "img2.jpg").unlink()
    with pytest.raises(DataError, match=r"SUN RGB-D file not found: .*img2\.jpg"):
        SunRGBD(str(tmp_path), "train")
    from scipy.io import savemat

    savemat(str(tmp_path / "SUNRGBDtoolbox" / "traintestSUNRGBD" / "allsplit.mat"),
            {"alltrain": np.array(["/n/fs/sun3d/data/SUNRGBD/kv1/other"], dtype=object)[None],
             "alltest": np.array(["x"], dtype=object)[None]})
    with pytest.raises(DataError, match=r"allsplit\.mat: scene SUNRGBD/kv1/other is not in .*SUNRGBDMeta\.mat"):
        SunRGBD(str(tmp_path), "train")


@pytest.mark.parametrize("recipe", ["sun_rgbd/refinenet_resnet152", "sun_rgbd/segnet_vgg16_bn"])
def test_sun_rgbd_recipe_starts_on_a_fixture_tree(tmp_path, recipe):
    make_sun(tmp_path / "data")
    write_recipe_and_train(recipe, tmp_path / "data", tmp_path)
