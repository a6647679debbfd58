"""Datasets and joint transforms: synthetic scenes, CamVid, folders, bad inputs."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch
from PIL import Image

from atrous.data import (
    CAMVID_INFO,
    CamVid,
    DataError,
    FolderDataset,
    SyntheticScenes,
    median_frequency_weights,
    train_transform,
)
from atrous.data.synthetic import BALL, BOAT, CAR, POLE, ROAD, WATER
from atrous.data.transforms import ElasticDeform, RandomCrop, RandomHorizontalFlip, RandomScale
from atrous.data.weights import class_weights


# --- synthetic scenes ---------------------------------------------------------------------
def test_synthetic_is_deterministic_and_splits_differ():
    a, b = SyntheticScenes("train", length=3), SyntheticScenes("train", length=3, cache=False)
    for i in range(3):
        assert torch.equal(a[i][0], b[i][0]) and torch.equal(a[i][1], b[i][1])
    val = SyntheticScenes("val", length=1)
    assert not torch.equal(a[0][0], val[0][0])
    image, mask = a[0]
    assert image.dtype == torch.uint8 and image.shape == (3, 128, 128)
    assert mask.dtype == torch.int64 and mask.shape == (128, 128)


def test_synthetic_scene_properties():
    ds = SyntheticScenes("train", length=40)
    seen = set()
    for i in range(len(ds)):
        seen |= set(ds[i][1].unique().tolist())
    assert seen == set(range(7)), "all seven classes appear"
    # the context pair: cars sit on road, boats on water, and the two look alike
    car_colours, boat_colours = [], []
    for i in range(len(ds)):
        image, mask = ds[i]
        for cls, region, colours in ((CAR, ROAD, car_colours), (BOAT, WATER, boat_colours)):
            obj = mask == cls
            if obj.sum() < 30:
                continue
            colours.append(image[:, obj].float().mean(dim=1))
            ring = torch.nn.functional.max_pool2d(obj[None, None].float(), 5, 1, 2)[0, 0].bool() & ~obj
            # what surrounds the object, occluders and other vehicles aside
            around = mask[ring]
            around = around[(around != BALL) & (around != POLE) & (around != cls)]
            assert (around == region).float().mean() > 0.5
    car_mean, boat_mean = torch.stack(car_colours).mean(0), torch.stack(boat_colours).mean(0)
    assert (car_mean - boat_mean).abs().max() < 25, "cars and boats share one colour distribution"


def test_synthetic_thin_structures_and_scales():
    ds = SyntheticScenes("train", length=30)
    widths = []
    for i in range(len(ds)):
        mask = ds[i][1]
        pole_rows = (mask == POLE).sum(dim=1)
        widths += pole_rows[pole_rows > 0].tolist()
    assert np.median(widths) <= 4, "poles are thin"


def test_bad_synthetic_arguments():
    with pytest.raises(ValueError, match="split"):
        SyntheticScenes("nope")
    with pytest.raises(ValueError, match="size"):
        SyntheticScenes("train", size=8)


# --- transforms ---------------------------------------------------------------------------
def test_crop_pads_with_ignore_and_keeps_pairs_aligned():
    image = torch.arange(2 * 3, dtype=torch.uint8).reshape(1, 2, 3).repeat(3, 1, 1)
    mask = torch.arange(2 * 3).reshape(2, 3)
    out_image, out_mask = RandomCrop(4)(image, mask, np.random.default_rng(0))
    assert out_image.shape == (3, 4, 4) and out_mask.shape == (4, 4)
    assert (out_mask == 255).sum() == 16 - 6
    valid = out_mask != 255
    assert torch.equal(out_image[0][valid].long(), out_mask[valid])


def test_flip_and_scale_keep_image_and_mask_together():
    image = torch.zeros(3, 10, 20, dtype=torch.uint8)
    image[:, :, :5] = 200
    mask = torch.zeros(10, 20, dtype=torch.long)
    mask[:, :5] = 1
    flipped = RandomHorizontalFlip(p=1.0)(image, mask, np.random.default_rng(0))
    assert flipped[1][:, -5:].eq(1).all() and flipped[0][0, :, -5:].eq(200).all()
    scaled_image, scaled_mask = RandomScale(2.0, 2.0)(image, mask, np.random.default_rng(0))
    assert scaled_mask.shape == (20, 40) and scaled_image.shape == (3, 20, 40)
    assert set(scaled_mask.unique().tolist()) == {0, 1}
    assert scaled_mask[:, :9].eq(1).all() and scaled_mask[:, 11:].eq(0).all()


class ConstantNormal:
    """A generator whose Gaussian draws are all `value`: a known, uniform displacement."""

    def __init__(self, value: float) -> None:
        self.value = value

    def normal(self, mean, std, size):
        return np.full(size, self.value)


def test_elastic_deformation_moves_image_and_mask_together():
    """Ronneberger et al., Sec. 3.1: displacements on a 3x3 grid, bicubic in between. A
    uniform displacement of 2 pixels takes each pixel from 2 rows down and 2 columns right;
    a zero one changes nothing; the mask keeps its labels (nearest neighbour)."""
    image = torch.randint(0, 256, (3, 20, 24), dtype=torch.uint8)
    mask = torch.randint(0, 5, (20, 24))
    moved_image, moved_mask = ElasticDeform(10.0)(image, mask, ConstantNormal(2.0))
    assert torch.equal(moved_image[:, :-2, :-2], image[:, 2:, 2:])
    assert torch.equal(moved_mask[:-2, :-2], mask[2:, 2:])
    same_image, same_mask = ElasticDeform(10.0)(image, mask, ConstantNormal(0.0))
    assert torch.equal(same_image, image) and torch.equal(same_mask, mask)
    rng = np.random.default_rng(0)
    field = ElasticDeform(10.0).displacement(21, 31, rng)
    coarse = np.random.default_rng(0).normal(0.0, 10.0, size=(1, 2, 3, 3))[0]
    corners = field[:, [0, 0, 10, 20], [0, 30, 15, 30]].numpy()  # grid points: corners and centre
    np.testing.assert_allclose(corners, coarse[:, [0, 0, 1, 2], [0, 2, 1, 2]], rtol=1e-5)
    warped_image, warped_mask = ElasticDeform(10.0)(image, mask, np.random.default_rng(1))
    assert set(warped_mask.unique().tolist()) <= set(mask.unique().tolist())
    assert (warped_mask != mask).float().mean() > 0.2 and warped_image.dtype == torch.uint8


def test_train_transform_is_reproducible_by_seed():
    image, mask = SyntheticScenes("train", length=1)[0]
    transform = train_transform(96, jitter=0.2)
    a = transform(image, mask, np.random.default_rng(5))
    b = transform(image, mask, np.random.default_rng(5))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert a[0].dtype == torch.float32 and a[0].shape == (3, 96, 96)


# --- CamVid (real files) -----------------------------------------------------------------
def test_camvid_real_files(camvid_root):
    train, val = CamVid(str(camvid_root), "train"), CamVid(str(camvid_root), "val")
    assert (len(train), len(val)) == (367, 101)
    image, mask = val[0]
    assert image.shape == (3, 360, 480) and image.dtype == torch.uint8
    values = set(mask.unique().tolist())
    assert values <= set(range(11)) | {255}
    assert 11 not in values
    assert CAMVID_INFO.num_classes == 11 and len(CAMVID_INFO.palette) == 11


def test_median_frequency_weights_on_camvid(camvid_root):
    weights = median_frequency_weights(CamVid(str(camvid_root), "train").mask_paths(), 11)
    # SegNet's published CamVid weights: road is the most frequent class, bicyclist and
    # pedestrian the rarest; the median class has weight 1
    assert weights.argmin() == 3  # Road
    assert weights[[9, 10]].min() > 5
    assert sorted(weights.tolist())[5] == pytest.approx(1.0)


def test_median_frequency_hand_computed(tmp_path):
    # image A: 3 px of class 0, 1 px of class 1; image B: 4 px of class 1 (and 0 absent)
    Image.fromarray(np.array([[0, 0], [0, 1]], np.uint8)).save(tmp_path / "a.png")
    Image.fromarray(np.array([[1, 1], [1, 1]], np.uint8)).save(tmp_path / "b.png")
    weights = median_frequency_weights([str(tmp_path / "a.png"), str(tmp_path / "b.png")], 2)
    freq0, freq1 = 3 / 4, 5 / 8  # class 1 appears in both images: 5 of 8 pixels
    median = np.median([freq0, freq1])
    assert weights.tolist() == pytest.approx([median / freq0, median / freq1])


def test_enet_and_sqrt_weights_hand_computed(tmp_path):
    # 8 labelled pixels: class 0 has 3, class 1 has 5; 255 is void and not counted
    Image.fromarray(np.array([[0, 0], [0, 1]], np.uint8)).save(tmp_path / "a.png")
    Image.fromarray(np.array([[1, 1], [1, 1], [255, 255]], np.uint8)).save(tmp_path / "b.png")
    paths = [str(tmp_path / "a.png"), str(tmp_path / "b.png")]
    enet = class_weights("enet", paths, 2)
    assert enet.tolist() == pytest.approx([1 / np.log(1.02 + 3 / 8), 1 / np.log(1.02 + 5 / 8)])
    median = class_weights("median_frequency", paths, 2)
    assert class_weights("sqrt_median_frequency", paths, 2).tolist() == pytest.approx(median.sqrt().tolist())
    assert class_weights("none", paths, 2) is None
    with pytest.raises(ValueError, match="unknown class weighting"):
        class_weights("inverse", paths, 2)


def test_camvid_sequence_splits_real_files(camvid_root):
    """seq_train: train frames of 0001TP and 0016E5; seq_test: the 101 of 0006R0; no frame
    (and no sequence) is in both, and val's sequence is not the held-out one."""
    from atrous.data.camvid import sequence_of

    seq_train, seq_test = CamVid(str(camvid_root), "seq_train"), CamVid(str(camvid_root), "seq_test")
    val = CamVid(str(camvid_root), "val")
    assert (len(seq_train), len(seq_test)) == (266, 101)
    train_sequences = {sequence_of(image) for image, _ in seq_train.items}
    assert train_sequences == {"0001TP", "0016E5"}
    assert {sequence_of(image) for image, _ in seq_test.items} == {"0006R0"}
    assert {sequence_of(image) for image, _ in val.items} <= train_sequences
    # the model to hand out trains on every labelled frame; its check, on all but 0006R0
    everything, check = CamVid(str(camvid_root), "trainval"), CamVid(str(camvid_root), "seq_trainval")
    assert (len(everything), len(check)) == (367 + 101, 266 + 101)
    assert set(everything.items) == set(CamVid(str(camvid_root), "train").items) | set(val.items)
    assert set(check.items) == set(seq_train.items) | set(val.items)


def test_camvid_sequence_splits_hand_made(tmp_path):
    names = ["0001TP_000030", "0006R0_f00930", "0016E5_00390", "Seq05VD_f00000", "0006R0_f00960"]
    for folder in ("train", "trainannot"):
        (tmp_path / folder).mkdir()
    for name in names:
        Image.fromarray(np.zeros((4, 6, 3), np.uint8)).save(tmp_path / "train" / f"{name}.png")
        Image.fromarray(np.full((4, 6), 11, np.uint8)).save(tmp_path / "trainannot" / f"{name}.png")
    # the SegNet listings hold absolute /SegNet/CamVid/... paths
    (tmp_path / "train.txt").write_text("".join(
        f"/SegNet/CamVid/train/{n}.png /SegNet/CamVid/trainannot/{n}.png\n" for n in names))
    stems = lambda split: [os.path.basename(i).split(".")[0] for i, _ in CamVid(str(tmp_path), split).items]  # noqa: E731
    assert stems("seq_test") == ["0006R0_f00930", "0006R0_f00960"]
    assert stems("seq_train") == ["0001TP_000030", "0016E5_00390", "Seq05VD_f00000"]
    assert int(CamVid(str(tmp_path), "seq_test")[0][1].max()) == 255  # void 11 -> 255 as in every split
    (tmp_path / "train.txt").write_text(f"train/{names[0]}.png trainannot/{names[0]}.png\n")
    with pytest.raises(DataError, match="seq_test.*0006R0"):
        CamVid(str(tmp_path), "seq_test")


def test_camvid_missing_folder(tmp_path):
    with pytest.raises(DataError, match="not found"):
        CamVid(str(tmp_path / "nowhere"))


# --- folder datasets ----------------------------------------------------------------------
def _folder(tmp_path, *, mask_size=(20, 10), values=(0, 1, 2), palette=False, classes=True):
    """A one-image folder dataset: a 20x10 image and its mask (with `values` first)."""
    tmp_path.mkdir(parents=True, exist_ok=True)
    (tmp_path / "images").mkdir()
    (tmp_path / "masks").mkdir()
    Image.fromarray(np.full((10, 20, 3), 120, np.uint8)).save(tmp_path / "images" / "a.jpg")
    mask = np.zeros(mask_size[::-1], np.uint8)
    mask.flat[: len(values)] = values
    image = Image.fromarray(mask, mode="L")
    if palette:
        image = image.convert("P")
        image.putpalette([0, 0, 0, 255, 0, 0, 0, 255, 0] + [0] * (256 * 3 - 9))
    image.save(tmp_path / "masks" / "a.png")
    if classes:
        (tmp_path / "classes.json").write_text(json.dumps({"classes": ["bg", "x", "y"]}))
    return tmp_path


@pytest.mark.parametrize("palette", [False, True])
def test_folder_dataset_reads_index_and_palette_masks(tmp_path, palette):
    ds = FolderDataset(str(_folder(tmp_path, palette=palette)))
    image, mask = ds[0]
    assert image.shape == (3, 10, 20)
    assert mask[0, :3].tolist() == [0, 1, 2]
    assert ds.info.class_names == ("bg", "x", "y")


def test_folder_dataset_errors_name_the_file(tmp_path):
    root = _folder(tmp_path / "size", mask_size=(19, 10))
    with pytest.raises(DataError, match=r"a\.png is 19x10 but its image is 20x10"):
        FolderDataset(str(root))[0]
    root = _folder(tmp_path / "labels", values=(0, 7))
    with pytest.raises(DataError, match=r"a\.png has label values \[7\]"):
        FolderDataset(str(root))[0]
    root = _folder(tmp_path / "nomask")
    (root / "masks" / "a.png").unlink()
    with pytest.raises(DataError, match=r"a\.jpg has no mask"):
        FolderDataset(str(root))
    root = _folder(tmp_path / "corrupt")
    (root / "images" / "a.jpg").write_bytes(b"not a jpeg at all")
    with pytest.raises(DataError, match=r"cannot read image .*a\.jpg"):
        FolderDataset(str(root))[0]
    root = _folder(tmp_path / "noclasses", classes=False)
    with pytest.raises(DataError, match="classes.json"):
        FolderDataset(str(root))
    assert FolderDataset(str(root), num_classes=3).info.num_classes == 3


def test_folder_dataset_labels_feed_class_weights(tmp_path):
    """--class-weights on a folder dataset: its labels() yields the masks with void as 255,
    so the weights are those of the label counts by hand (median frequency, Eigen & Fergus)."""
    import json

    import numpy as np
    from PIL import Image

    from atrous.data import FolderDataset
    from atrous.data.weights import class_weights

    (tmp_path / "images").mkdir()
    (tmp_path / "masks").mkdir()
    masks = [np.array([[0, 0, 1, 9]], np.uint8), np.array([[1, 1, 1, 2]], np.uint8)]  # 9: this folder's void
    for i, mask in enumerate(masks):
        Image.fromarray(np.zeros((1, 4, 3), np.uint8)).save(tmp_path / "images" / f"{i}.png")
        Image.fromarray(mask).save(tmp_path / "masks" / f"{i}.png")
    (tmp_path / "classes.json").write_text(json.dumps({"classes": ["a", "b", "c"], "ignore_index": 9}))
    dataset = FolderDataset(str(tmp_path), "train")
    labels = list(dataset.labels())
    assert [m.tolist() for m in labels] == [[[0, 0, 1, 255]], [[1, 1, 1, 2]]]
    # freq: a 2/4 (one image of 4 pixels), b 4/8, c 1/4; median 0.5
    weights = class_weights("median_frequency", labels, 3)
    assert weights.tolist() == pytest.approx([1.0, 1.0, 2.0])
