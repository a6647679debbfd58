"""PASCAL VOC 2012 and VOC + SBD (voc_aug) in their native layouts, on tiny fixture trees."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from atrous.data import DataError, VOCAug, VOCSegmentation, build_dataset
from atrous.data.voc import VOC_INFO, train_aug_ids

VOC_PALETTE = [(0, 0, 0), (128, 0, 0), (0, 128, 0), (128, 128, 0), (0, 0, 128), (128, 0, 128), (0, 128, 128),
               (128, 128, 128), (64, 0, 0), (192, 0, 0), (64, 128, 0), (192, 128, 0), (64, 0, 128),
               (192, 0, 128), (64, 128, 128), (192, 128, 128), (0, 64, 0), (128, 64, 0), (0, 192, 0),
               (128, 192, 0), (0, 64, 128)]  # VOCcolormap.m, typed from the devkit's colours


def label_map(seed: int, height: int = 24, width: int = 32, border: bool = True) -> np.ndarray:
    """Class indices 0..20 with a 255 band around one object, as in VOC's PNGs."""
    rng = np.random.default_rng(seed)
    label = np.zeros((height, width), np.uint8)
    label[4:16, 6:20] = rng.integers(1, 21)
    if border:
        label[3, 5:21] = label[16, 5:21] = 255
    return label


def write_palette_png(path: Path, label: np.ndarray) -> None:
    image = Image.fromarray(label, mode="P")
    flat = [v for colour in VOC_PALETTE for v in colour]
    image.putpalette(flat + [0] * (768 - len(flat) - 3) + [224, 224, 192])  # 255: VOC's border colour
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path)


def write_jpeg(path: Path, height: int = 24, width: int = 32, seed: int = 0) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(seed).integers(0, 255, (height, width, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path, quality=95)


def write_sbd_mat(path: Path, segmentation: np.ndarray) -> None:
    """A `cls/<id>.mat` in SBD's layout: struct GTcls with Boundaries (a cell of sparse
    boundary maps, one per class), Segmentation and CategoriesPresent."""
    from scipy import sparse
    from scipy.io import savemat

    boundaries = np.empty((20, 1), dtype=object)
    for k in range(20):
        boundaries[k, 0] = sparse.csc_matrix(segmentation.shape, dtype=np.uint8)
    present = np.unique(segmentation[(segmentation > 0) & (segmentation < 255)]).astype(np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    savemat(str(path), {"GTcls": {"Boundaries": boundaries, "Segmentation": segmentation,
                                  "CategoriesPresent": present}})


def make_voc(root: Path, splits: dict[str, list[str]]) -> dict[str, np.ndarray]:
    """root/VOCdevkit/VOC2012 with JPEGs, palette PNG labels and ImageSets; returns the labels."""
    voc = root / "VOCdevkit" / "VOC2012"
    sets = voc / "ImageSets" / "Segmentation"
    sets.mkdir(parents=True)
    labels = {}
    for split, ids in splits.items():
        (sets / f"{split}.txt").write_text("".join(f"{i}\n" for i in ids))
        for n, image_id in enumerate(ids):
            labels[image_id] = label_map(seed=len(labels))
            write_jpeg(voc / "JPEGImages" / f"{image_id}.jpg", seed=n)
            write_palette_png(voc / "SegmentationClass" / f"{image_id}.png", labels[image_id])
    return labels


def make_sbd(root: Path, train: list[str], val: list[str], images_only_in_sbd: set[str]) -> dict[str, np.ndarray]:
    sbd = root / "benchmark_RELEASE" / "dataset"
    sbd.mkdir(parents=True)
    (sbd / "train.txt").write_text("".join(f"{i}\n" for i in train))
    (sbd / "val.txt").write_text("".join(f"{i}\n" for i in val))
    labels = {}
    voc_images = root / "VOCdevkit" / "VOC2012" / "JPEGImages"
    for n, image_id in enumerate(train + val):
        labels[image_id] = label_map(seed=500 + n, border=False)  # SBD has no void band
        write_sbd_mat(sbd / "cls" / f"{image_id}.mat", labels[image_id])
        write_jpeg(sbd / "img" / f"{image_id}.jpg", seed=500 + n)
        if image_id not in images_only_in_sbd and not (voc_images / f"{image_id}.jpg").exists():
            write_jpeg(voc_images / f"{image_id}.jpg", seed=500 + n)
    return labels


def test_voc_info_hand_typed():
    assert VOC_INFO.num_classes == 21 and VOC_INFO.ignore_index == 255
    assert VOC_INFO.class_names[0] == "background" and VOC_INFO.class_names[15] == "person"
    assert VOC_INFO.class_names[20] == "tvmonitor"
    assert list(VOC_INFO.palette) == VOC_PALETTE


def test_voc_reads_palette_indices_and_keeps_the_border_void(tmp_path):
    labels = make_voc(tmp_path, {"train": ["2007_000032", "2007_000039"], "val": ["2007_000033"]})
    (tmp_path / "VOCdevkit/VOC2012/ImageSets/Segmentation/trainval.txt").write_text(
        "2007_000032\n2007_000033\n2007_000039\n")
    ds = build_dataset("voc", "train", data_root=str(tmp_path))
    assert isinstance(ds, VOCSegmentation) and len(ds) == 2 and ds.info.name == "voc"
    for index, image_id in enumerate(["2007_000032", "2007_000039"]):
        image, mask = ds[index]
        assert image.shape == (3, 24, 32) and image.dtype == torch.uint8 and mask.dtype == torch.int64
        assert torch.equal(mask, torch.from_numpy(labels[image_id].astype(np.int64)))
        assert (mask == 255).sum() == 32  # the two border rows, kept as void
    assert len(build_dataset("voc", "trainval", data_root=str(tmp_path))) == 3
    # --data-root may be the folder holding VOCdevkit, VOCdevkit, or VOC2012 itself
    for root in (tmp_path / "VOCdevkit", tmp_path / "VOCdevkit" / "VOC2012"):
        assert VOCSegmentation(str(root), "val").items == build_dataset("voc", "val", data_root=str(tmp_path)).items
    assert [label.tolist() for label in ds.labels()] == [labels[i].tolist() for i in ("2007_000032", "2007_000039")]


def test_voc_errors_name_the_file(tmp_path):
    with pytest.raises(DataError, match="not found"):
        VOCSegmentation(str(tmp_path / "nowhere"))
    with pytest.raises(DataError, match="VOCdevkit"):
        VOCSegmentation(str(tmp_path))
    make_voc(tmp_path, {"train": ["a", "b"], "val": ["c"]})
    voc = tmp_path / "VOCdevkit" / "VOC2012"
    with pytest.raises(DataError, match="test labels are not public"):
        VOCSegmentation(str(tmp_path), "test")
    with pytest.raises(DataError, match="trainval.txt"):
        VOCSegmentation(str(tmp_path), "trainval")
    (voc / "JPEGImages" / "b.jpg").unlink()
    with pytest.raises(DataError, match=r"b\.jpg"):
        VOCSegmentation(str(tmp_path), "train")
    write_palette_png(voc / "SegmentationClass" / "c.png", label_map(1, height=20))
    with pytest.raises(DataError, match=r"c\.png is 32x20 but its image is 32x24"):
        VOCSegmentation(str(tmp_path), "val")[0]
    bad = label_map(1)
    bad[0, 0] = 21
    write_palette_png(voc / "SegmentationClass" / "c.png", bad)
    with pytest.raises(DataError, match=r"c\.png has label values \[21\]"):
        VOCSegmentation(str(tmp_path), "val")[0]
    Image.new("RGB", (32, 24)).save(voc / "SegmentationClass" / "c.png")
    with pytest.raises(DataError, match=r"c\.png is a RGB image"):
        VOCSegmentation(str(tmp_path), "val")[0]


def test_train_aug_arithmetic():
    """(SBD train | SBD val | VOC train) - VOC val: the rule that gives 10,582 on the real sets."""
    voc_train, voc_val = ["a", "b", "c", "d"], ["e", "f"]
    sbd_train, sbd_val = ["a", "e", "g", "h"], ["b", "f", "i"]
    assert train_aug_ids(voc_train, voc_val, sbd_train, sbd_val) == ["a", "b", "c", "d", "g", "h", "i"]


@pytest.fixture
def voc_aug_root(tmp_path) -> tuple[Path, dict, dict]:
    pytest.importorskip("scipy", reason="scipy (the datasets extra) reads SBD's .mat files")
    voc_labels = make_voc(tmp_path, {"train": ["a", "b", "c", "d"], "val": ["e", "f"]})
    sbd_labels = make_sbd(tmp_path, ["a", "e", "g", "h"], ["b", "f", "i"], images_only_in_sbd={"g", "i"})
    return tmp_path, voc_labels, sbd_labels


def test_voc_aug_train_aug_sources(voc_aug_root):
    root, voc_labels, sbd_labels = voc_aug_root
    ds = build_dataset("voc_aug", "train", data_root=str(root))  # what the training loop asks for
    assert isinstance(ds, VOCAug) and ds.split == "train_aug" and ds.info.num_classes == 21
    assert [Path(label).stem for _, label in ds.items] == ["a", "b", "c", "d", "g", "h", "i"]
    voc, sbd = root / "VOCdevkit" / "VOC2012", root / "benchmark_RELEASE" / "dataset"
    expected_labels = [voc / "SegmentationClass" / f"{i}.png" for i in "abcd"] + [sbd / "cls" / f"{i}.mat" for i in "ghi"]
    assert [label for _, label in ds.items] == [str(p) for p in expected_labels]
    expected_images = [voc / "JPEGImages" / f"{i}.jpg" for i in "abcd"] + [
        sbd / "img" / "g.jpg", voc / "JPEGImages" / "h.jpg", sbd / "img" / "i.jpg"]
    assert [image for image, _ in ds.items] == [str(p) for p in expected_images]
    for index, image_id in enumerate("abcdghi"):
        source = voc_labels if image_id in "abcd" else sbd_labels  # VOC's PNG where VOC has one
        _, mask = ds[index]
        assert torch.equal(mask, torch.from_numpy(source[image_id].astype(np.int64))), image_id
    assert [m.tolist() for m in ds.labels()] == [(voc_labels if i in "abcd" else sbd_labels)[i].tolist()
                                                  for i in "abcdghi"]
    assert ds.items == VOCAug(str(root / "VOCdevkit" / "VOC2012"), "train_aug").items  # SBD found from VOC2012 too
    val = build_dataset("voc_aug", "val", data_root=str(root))
    assert [Path(label).name for _, label in val.items] == ["e.png", "f.png"]


def test_voc_aug_errors(voc_aug_root):
    root, _, _ = voc_aug_root
    sbd = root / "benchmark_RELEASE" / "dataset"
    with pytest.raises(DataError, match="voc_aug has no 'trainval' split"):
        VOCAug(str(root), "trainval")
    from scipy.io import savemat

    savemat(str(sbd / "cls" / "g.mat"), {"other": np.zeros((2, 2))})
    ds = VOCAug(str(root), "train_aug")
    with pytest.raises(DataError, match=r"g\.mat holds no GTcls.Segmentation"):
        ds[4]
    (sbd / "cls" / "h.mat").write_bytes(b"MATLAB 5.0 MAT-file, not really" + bytes(200))
    with pytest.raises(DataError, match=r"cannot read SBD label .*h\.mat"):
        ds[5]
    (sbd / "cls" / "i.mat").unlink()
    with pytest.raises(DataError, match=r"i\.mat"):
        VOCAug(str(root), "train_aug")
    (sbd / "cls").rename(sbd / "classes")
    with pytest.raises(DataError, match="SBD not found.*benchmark_RELEASE"):
        VOCAug(str(root), "train_aug")
