"""Your own data end to end: a folder of 4-band 16-bit TIFFs trained, evaluated and predicted
from the command line without a conversion to 8-bit RGB; `atrous data stats|check|show`
checked against NumPy by hand; the bad inputs of the your-own-data issue, each one line."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors import safe_open

from atrous.cli import main
from atrous.data import build_dataset
from atrous.data.display import display_rgb

tifffile = pytest.importorskip("tifffile")


def tiff_folder(root, count=4, side=40, bands=4, seed=0):
    """`count` (bands, side, side) uint16 TIFFs and 3-class masks; returns the images (C, H, W)."""
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    rng = np.random.default_rng(seed)
    images = []
    for i in range(count):
        image = rng.integers(0, 12000, (bands, side, side)).astype(np.uint16)
        tifffile.imwrite(root / "images" / f"tile{i}.tif", np.moveaxis(image, 0, -1), photometric="minisblack",
                         compression="zlib")
        Image.fromarray(rng.integers(0, 3, (side, side)).astype(np.uint8)).save(root / "masks" / f"tile{i}.png")
        images.append(image)
    (root / "classes.json").write_text(json.dumps({"classes": ["field", "road", "roof"]}))
    return images


def test_data_stats_are_numpys_and_print_the_flags(tmp_path, capsys):
    images = tiff_folder(tmp_path / "tiles")
    code = main(["data", "stats", "--dataset", "folder", "--data-root", str(tmp_path / "tiles"), "--no-progress"])
    out = capsys.readouterr().out
    assert code == 0
    stacked = np.stack(images).astype(np.float64)  # (N, C, H, W)
    mean, std = stacked.mean(axis=(0, 2, 3)), stacked.std(axis=(0, 2, 3))
    flags = out.strip().splitlines()[-1].removeprefix("train with: ").split()
    given_mean = [float(v) for v in flags[1:5]]
    given_std = [float(v) for v in flags[6:10]]
    assert flags[0] == "--mean" and flags[5] == "--std"
    assert np.allclose(given_mean, mean, rtol=1e-5) and np.allclose(given_std, std, rtol=1e-5)
    assert f"{int(stacked.max(axis=(0, 2, 3))[0])}" in out and "40x40 (4)" in out


def test_data_stats_of_photographs_are_on_the_0_1_scale():
    from atrous.data.stats import dataset_stats

    dataset = build_dataset("synthetic", "train", synthetic_size=32, synthetic_length=3)
    stats = dataset_stats(dataset, dataset.info.num_classes)
    pixels = torch.stack([dataset[i][0] for i in range(3)]).double() / 255  # (3, 3, 32, 32)
    assert np.allclose(stats.mean, pixels.mean(dim=(0, 2, 3)).numpy(), atol=1e-9)
    labels = torch.stack([dataset[i][1] for i in range(3)])
    assert stats.class_pixels == torch.bincount(labels.flatten(), minlength=7).tolist()


def test_data_check_lists_every_bad_pair_at_once(tmp_path, capsys):
    root = tmp_path / "tiles"
    tiff_folder(root, count=6)
    rng = np.random.default_rng(1)
    tifffile.imwrite(root / "images" / "tile1.tif", rng.integers(0, 9, (40, 40, 5)).astype(np.uint16),
                     photometric="minisblack")  # 5 bands among 4-band images
    (root / "images" / "tile2.tif").write_bytes(b"II*\x00 not a tiff")  # unreadable
    Image.fromarray(np.zeros((30, 40), np.uint8)).save(root / "masks" / "tile3.png")  # size mismatch
    Image.fromarray(np.full((40, 40), 7, np.uint8)).save(root / "masks" / "tile4.png")  # label outside
    code = main(["data", "check", "--dataset", "folder", "--data-root", str(root), "--no-progress"])
    lines = capsys.readouterr().out.strip().splitlines()
    assert code == 1
    problems, summary = lines[:-1], lines[-1]
    assert summary.endswith("6 pairs read, 4 with problems")
    assert len(problems) == 4
    assert "tile1.tif has 5 bands" in problems[0]
    assert "tile2.tif" in problems[1] and "cannot read" in problems[1]
    assert "tile3.png is 40x30" in problems[2]
    assert "tile4.png" in problems[3] and "[7]" in problems[3]


def test_data_check_of_a_good_dataset_exits_0(tmp_path, capsys):
    tiff_folder(tmp_path / "tiles", count=2)
    assert main(["data", "check", "--dataset", "folder", "--data-root", str(tmp_path / "tiles"), "--no-progress"]) == 0
    assert "2 pairs read, 0 with problems" in capsys.readouterr().out


def test_data_show_draws_the_augmented_samples(tmp_path, capsys):
    root = tmp_path / "tiles"
    tiff_folder(root, count=3)
    config = tmp_path / "recipe.yaml"
    config.write_text("crop_size: 24\nscale_min: 1.0\nscale_max: 1.0\n")
    out = tmp_path / "samples.png"
    code = main(["data", "show", "--dataset", "folder", "--data-root", str(root), "--config", str(config),
                 "--count", "3", "--out", str(out), "--display-bands", "3", "2", "1", "--no-progress"])
    assert code == 0, capsys.readouterr().err
    picture = np.asarray(Image.open(out))
    # two rows of two (image | overlay) tiles of 24 x (24 + 4 + 24), 4-pixel gaps
    assert picture.shape == (24 + 4 + 24, 2 * (24 + 4 + 24) + 4, 3)


def test_display_bands_stretch_by_hand():
    image = torch.zeros(4, 1, 101)
    image[3, 0] = torch.arange(101, dtype=torch.float32)  # 0..100: percentiles 2 and 98 are 2 and 98
    shown = display_rgb(image, [3])
    expected = np.clip((np.arange(101) - 2) / 96, 0, 1) * 255
    assert np.array_equal(shown[0, :, 0], expected.round().astype(np.uint8))
    assert (shown[..., 0] == shown[..., 2]).all()  # one band: grey
    photo = torch.randint(0, 256, (3, 5, 5), dtype=torch.uint8)
    assert np.array_equal(display_rgb(photo), photo.permute(1, 2, 0).numpy())  # photographs as they are


def test_four_band_16_bit_tiffs_train_evaluate_and_predict(tmp_path, capsys):
    """The done-when of the issue for multiclass masks: one command each, nothing converted to
    8-bit RGB, the normalisation in the checkpoint and applied by eval and predict."""
    root = tmp_path / "tiles"
    images = tiff_folder(root, count=4, side=48)
    mean, std = ["6000"] * 4, ["3464"] * 4
    out = tmp_path / "run"
    code = main(["train", "--model", "unet", "--model-opt", "base_channels=8", "--dataset", "folder",
                 "--data-root", str(root), "--out", str(out), "--iters", "2", "--batch-size", "2",
                 "--crop-size", "32", "--mean", *mean, "--std", *std, "--eval-split", "train", "--no-progress"])
    assert code == 0, capsys.readouterr().err
    with safe_open(str(out / "model.safetensors"), "pt") as handle:
        header = json.loads(handle.metadata()["atrous"])
    assert header["model"]["in_channels"] == 4
    assert header["meta"]["mean"] == [6000.0] * 4 and header["meta"]["std"] == [3464.0] * 4
    assert main(["eval", "--checkpoint", str(out / "model.safetensors"), "--dataset", "folder",
                 "--data-root", str(root), "--split", "train", "--no-progress"]) == 0
    predicted = tmp_path / "pred"
    assert main(["predict", "--checkpoint", str(out / "model.safetensors"), str(root / "images" / "tile0.tif"),
                 "--out", str(predicted), "--display-bands", "2", "1", "0", "--no-progress"]) == 0
    mask = np.asarray(Image.open(predicted / "tile0.png"))
    overlay = np.asarray(Image.open(predicted / "tile0_overlay.png"))
    assert mask.shape == (48, 48) and overlay.shape == (48, 48, 3) and mask.max() < 3
    # the same labels as the model on the normalised 16-bit values
    import atrous
    from atrous.checkpoints.checkpoint import load_checkpoint

    model = load_checkpoint(str(out / "model.safetensors")).eval()
    by_hand = (torch.from_numpy(images[0].astype(np.float32))[None] - 6000) / 3464
    with torch.no_grad():
        scores = model(by_hand)
    assert np.array_equal(scores.argmax(1)[0].numpy(), mask)
    raw = atrous.data.read_image(str(root / "images" / "tile0.tif"))
    assert torch.allclose(atrous.normalise_for(model, raw[None]), by_hand)


def test_float_images_without_statistics_say_how_to_get_them(tmp_path, capsys):
    tiff_folder(tmp_path / "tiles", count=2)
    code = main(["train", "--model", "unet", "--dataset", "folder", "--data-root", str(tmp_path / "tiles"),
                 "--out", str(tmp_path / "run"), "--iters", "1", "--no-progress"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1
    assert "4-band float32" in err and "atrous data stats" in err and "--mean and --std" in err


def test_a_band_count_unlike_the_models_is_one_line_naming_the_file(tmp_path, capsys):
    import atrous

    model = atrous.create_model("unet", 3, in_channels=4, base_channels=8)
    model.meta = {"mean": [0.0] * 4, "std": [1.0] * 4}
    atrous.save_checkpoint(model, str(tmp_path / "four.safetensors"))
    Image.fromarray(np.zeros((16, 16, 3), np.uint8)).save(tmp_path / "photo.png")
    code = main(["predict", "--checkpoint", str(tmp_path / "four.safetensors"), str(tmp_path / "photo.png"),
                 "--out", str(tmp_path / "out"), "--no-progress"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1
    assert "photo.png has 3 bands; the model takes 4" in err
    assert not (tmp_path / "out" / "photo.png").exists()


def test_in_channels_that_contradict_the_data_are_refused(tmp_path, capsys):
    tiff_folder(tmp_path / "tiles", count=2)
    code = main(["train", "--model", "unet", "--dataset", "folder", "--data-root", str(tmp_path / "tiles"),
                 "--out", str(tmp_path / "run"), "--iters", "1", "--in-channels", "3", "--mean", "0", "0", "0",
                 "--std", "1", "1", "1", "--no-progress"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "--in-channels is 3" in err and "4 bands" in err


def test_the_fifth_band_alone_separates_vegetation_from_paint():
    from atrous.data.synthetic_multispectral import PAINT, VEGETATION

    five = build_dataset("synthetic_multispectral", "train", synthetic_size=64, synthetic_length=6)
    rgb = build_dataset("synthetic_multispectral_rgb", "train", synthetic_size=64, synthetic_length=6)
    image, mask = five[0]
    assert image.shape == (5, 64, 64) and image.dtype == torch.float32
    assert torch.equal(rgb[0][0], image[:3]) and torch.equal(rgb[0][1], mask)
    values = torch.cat([five[i][0].flatten(1) for i in range(6)], 1)  # (5, pixels)
    labels = torch.cat([five[i][1].flatten() for i in range(6)])
    plant, paint = values[:, labels == VEGETATION].mean(1), values[:, labels == PAINT].mean(1)
    assert torch.allclose(plant[:4], paint[:4], rtol=0.05)  # the same in red, green, blue, red edge
    assert plant[4] > 3 * paint[4]  # NIR tells them apart


def test_serve_takes_a_four_band_tiff_and_shows_it_through_the_display_bands(tmp_path):
    pytest.importorskip("httpx", reason="starlette's TestClient needs httpx")
    import io

    from starlette.testclient import TestClient

    import atrous
    from atrous.serve import ServeConfig, build_app

    torch.manual_seed(0)
    model = atrous.create_model("unet", 3, in_channels=4, base_channels=8).eval()
    model.meta = {"mean": [100.0, 200.0, 300.0, 400.0], "std": [50.0] * 4, "class_names": ["a", "b", "c"]}
    atrous.save_checkpoint(model, str(tmp_path / "four.safetensors"))
    bands = np.random.default_rng(3).integers(0, 600, (4, 24, 32)).astype(np.uint16)
    upload = io.BytesIO()
    tifffile.imwrite(upload, np.moveaxis(bands, 0, -1), photometric="minisblack")
    config = ServeConfig(str(tmp_path / "four.safetensors"), display_bands=[3, 2, 1])
    with TestClient(build_app(config)) as client:
        files = {"image": ("tile.tif", upload.getvalue(), "image/tiff")}
        mask = np.asarray(Image.open(io.BytesIO(client.post("/predict?output=mask", files=files).content)))
        shown = np.asarray(Image.open(io.BytesIO(client.post("/predict?output=overlay&opacity=0", files=files).content)))
    x = (torch.from_numpy(bands.astype(np.float32)) - torch.tensor([100.0, 200, 300, 400]).view(4, 1, 1)) / 50
    with torch.no_grad():
        assert np.array_equal(mask, model(x[None]).argmax(1)[0].numpy())
    assert np.array_equal(shown, display_rgb(torch.from_numpy(bands.astype(np.float32)), [3, 2, 1]))


def test_four_band_geotiff_tiles_with_binary_masks_from_folder_to_a_georeferenced_scene(tmp_path, capsys):
    """The issue's done-when: a folder of 4-band 16-bit GeoTIFF tiles and 0/255 binary masks is
    checked, trained, evaluated, and a whole scene predicted, one command each; the predicted
    scene keeps the input's CRS and geotransform."""
    rasterio = pytest.importorskip("rasterio")
    from rasterio.transform import from_origin

    root = tmp_path / "tiles"
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    rng = np.random.default_rng(4)
    transform, crs = from_origin(500000.0, 4600000.0, 10.0, 10.0), "EPSG:32633"

    def geotiff(path, bands):
        with rasterio.open(path, "w", driver="GTiff", height=bands.shape[1], width=bands.shape[2], count=4,
                           dtype="uint16", crs=crs, transform=transform, tiled=True, blockxsize=16,
                           blockysize=16, compress="lzw") as out:
            out.write(bands)

    for i in range(3):
        bands = rng.integers(0, 3000, (4, 32, 32)).astype(np.uint16)
        roof = np.zeros((32, 32), np.uint8)
        roof[8:20, 6:26] = 255
        bands[3][roof > 0] += 6000  # bright in the fourth band where there is a roof
        geotiff(root / "images" / f"tile{i}.tif", bands)
        Image.fromarray(roof).save(root / "masks" / f"tile{i}.png")
    (root / "classes.json").write_text(json.dumps({"classes": ["roof"]}))
    data = ["--dataset", "folder", "--data-root", str(root), "--task", "binary"]
    assert main(["data", "check", *data, "--no-progress"]) == 0, capsys.readouterr()
    out = tmp_path / "run"
    assert main(["train", "--model", "unet", "--model-opt", "base_channels=8", *data, "--out", str(out),
                 "--iters", "2", "--batch-size", "2", "--crop-size", "32", "--mean", "1500", "1500", "1500", "3000",
                 "--std", "900", "900", "900", "3000", "--eval-split", "train", "--no-progress"]) == 0, \
        capsys.readouterr().err
    checkpoint = str(out / "model.safetensors")
    assert main(["eval", "--checkpoint", checkpoint, "--dataset", "folder", "--data-root", str(root),
                 "--split", "train", "--no-progress"]) == 0, capsys.readouterr().err
    scene = tmp_path / "scene.tif"
    geotiff(scene, rng.integers(0, 9000, (4, 70, 90)).astype(np.uint16))
    assert main(["predict", "--checkpoint", checkpoint, str(scene), "--out", str(tmp_path / "pred"),
                 "--no-progress"]) == 0, capsys.readouterr().err
    with rasterio.open(tmp_path / "pred" / "scene.tif") as predicted:
        assert predicted.crs.to_string() == crs and predicted.transform == transform
        assert predicted.shape == (70, 90) and predicted.count == 1
        assert set(np.unique(predicted.read(1)).tolist()) <= {0, 1}


def test_a_datasets_own_normalisation_is_its_default():
    """NYUDv2's RGB-D declares its per-band statistics; given ones win; without either a
    float dataset is refused."""
    from atrous.data.meta import DatasetInfo
    from atrous.errors import UserError
    from atrous.training.config import TrainOptions
    from atrous.training.parts import input_bands

    class Declared(torch.utils.data.Dataset):
        def __init__(self, extra):
            self.info = DatasetInfo("rgbd", ("a",), ((0, 0, 0),), extra=extra)

        def __len__(self):
            return 1

        def __getitem__(self, index):
            return torch.zeros(4, 8, 8), torch.zeros(8, 8, dtype=torch.long)

    own = {"mean": (1.0, 2.0, 3.0, 4.0), "std": (5.0, 6.0, 7.0, 8.0)}
    assert input_bands(TrainOptions(), Declared(own)).mean == own["mean"]
    given = TrainOptions(mean=(0.0,) * 4, std=(1.0,) * 4)
    assert input_bands(given, Declared(own)).std == (1.0,) * 4
    with pytest.raises(UserError, match="no default normalisation"):
        input_bands(TrainOptions(), Declared({}))
