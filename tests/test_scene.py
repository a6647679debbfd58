"""Scenes read and written window by window (atrous.inference.scene): the same scores as
atrous.infer on the scene read whole, the input's CRS and geotransform kept, memory bounded
by the open rows, bad input refused in one line."""

from __future__ import annotations

import sys
import warnings

import numpy as np
import pytest
import torch

import atrous
from atrous.errors import UserError
from atrous.inference.infer import make_views
from atrous.inference.scene import BLOCK, OpenRows, SceneGrid, is_scene, predict_scene
from tests.test_cli import assert_one_line_error, run

rasterio = pytest.importorskip("rasterio", reason="rasterio (the geo extra) is not installed")

CRS = "EPSG:32633"
TRANSFORM = rasterio.Affine(10.0, 0.0, 500000.0, 0.0, -10.0, 4000000.0)  # 10 m pixels, north up
MEAN, STD = [1500.0, 1200.0, 900.0, 2500.0], [800.0, 600.0, 500.0, 1000.0]
WINDOW, STRIDE = (96, 128), (64, 80)  # neither divides the scene: the last windows are flush with the border


def write_scene(path, data: np.ndarray, *, crs=CRS, transform=TRANSFORM) -> None:
    """(C, H, W) array as a GeoTIFF (a plain TIFF when crs is None)."""
    profile = dict(driver="GTiff", height=data.shape[1], width=data.shape[2], count=data.shape[0], dtype=data.dtype)
    if crs is not None:
        profile.update(crs=crs, transform=transform)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", rasterio.errors.NotGeoreferencedWarning)
        with rasterio.open(path, "w", **profile) as dst:
            dst.write(data)


def scene_data(height=300, width=400, bands=4, seed=0) -> np.ndarray:
    """(bands, H, W) uint16: smooth fields with noise, values in the thousands."""
    rng = np.random.default_rng(seed)
    rows, cols = np.mgrid[0:height, 0:width]
    data = [1000 + 800 * np.sin(rows / (17 + 5 * b)) * np.cos(cols / (23 + 3 * b)) + rng.normal(0, 200, (height, width))
            for b in range(bands)]
    return np.clip(np.stack(data) + 1000, 0, 65535).astype(np.uint16)


def tiny_model(classes: int, task: str | None = None, in_channels: int = 4) -> atrous.SegmentationModel:
    torch.manual_seed(0)
    model = atrous.create_model("unet", classes, in_channels=in_channels, base_channels=4)
    model.meta = {"mean": MEAN[:in_channels], "std": STD[:in_channels], "class_names": [f"c{i}" for i in range(classes)]}
    if task:
        model.meta["task"] = task
    return model.eval()


def reference_scores(model, data: np.ndarray) -> torch.Tensor:
    """atrous.infer on the scene read whole, normalised by hand in its own units -> (K, H, W)."""
    x = (torch.from_numpy(data.astype(np.float32)) - torch.tensor(MEAN).view(-1, 1, 1)) / torch.tensor(STD).view(-1, 1, 1)
    return atrous.infer(model, x[None], window=WINDOW, stride=STRIDE, precision="fp32")[0]


def read(path) -> tuple[np.ndarray, dict]:
    with rasterio.open(path) as src:
        return src.read(), {"crs": src.crs, "transform": src.transform, "blocks": src.block_shapes,
                            "dtype": src.dtypes[0], "compress": src.compression, "names": src.descriptions}


def test_a_scene_window_by_window_equals_infer_on_the_whole_scene(tmp_path):
    data = scene_data()  # 300 rows: two output blocks, the second short
    write_scene(tmp_path / "scene.tif", data)
    model = tiny_model(3)
    paths = predict_scene(model, str(tmp_path / "scene.tif"), str(tmp_path / "out"), views=make_views(window=WINDOW, stride=STRIDE),
                          batch_size=3, save="probs", precision="fp32", progress=False)
    assert [p.split("/")[-1] for p in paths] == ["scene.tif", "scene_probs.tif"]
    scores = reference_scores(model, data)
    mask, mask_info = read(paths[0])
    probs, probs_info = read(paths[1])
    assert mask.shape == (1, 300, 400) and mask_info["dtype"] == "uint8"
    np.testing.assert_array_equal(mask[0], scores.argmax(0).numpy())
    assert probs.shape == (3, 300, 400) and probs_info["dtype"] == "float32"
    np.testing.assert_allclose(probs, torch.softmax(scores, 0).numpy(), atol=1e-6, rtol=0)
    for info in (mask_info, probs_info):
        assert info["crs"] == rasterio.crs.CRS.from_string(CRS) and info["transform"] == TRANSFORM
        assert set(info["blocks"]) == {(BLOCK, BLOCK)} and info["compress"].name.lower() == "deflate"
    assert probs_info["names"] == ("c0", "c1", "c2")
    assert len(set(np.unique(mask[0]))) > 1  # the comparison is not between two constant masks


def test_a_scene_smaller_than_a_window_is_padded_as_infer_pads_it(tmp_path):
    data = scene_data(50, 70, seed=1)
    write_scene(tmp_path / "small.tif", data)
    model = tiny_model(2)
    [path] = predict_scene(model, str(tmp_path / "small.tif"), str(tmp_path / "out"),
                           views=make_views(window=WINDOW, stride=STRIDE), precision="fp32", progress=False)
    np.testing.assert_array_equal(read(path)[0][0], reference_scores(model, data).argmax(0).numpy())


def test_uint8_scenes_are_scaled_to_0_1_before_the_normalisation(tmp_path):
    rng = np.random.default_rng(2)
    data = rng.integers(0, 256, (3, 120, 150), dtype=np.uint8)
    write_scene(tmp_path / "rgb.tif", data)
    model = tiny_model(2, in_channels=3)
    model.meta.update(mean=[0.4, 0.5, 0.6], std=[0.2, 0.25, 0.3])
    [path] = predict_scene(model, str(tmp_path / "rgb.tif"), str(tmp_path / "out"), views=make_views(window=64, stride=48),
                           save=None, precision="fp32", progress=False)
    x = (torch.from_numpy(data).float() / 255 - torch.tensor([0.4, 0.5, 0.6]).view(-1, 1, 1)) / torch.tensor(
        [0.2, 0.25, 0.3]).view(-1, 1, 1)
    expected = atrous.infer(model, x[None], window=64, stride=48, precision="fp32")[0].argmax(0).numpy()
    np.testing.assert_array_equal(read(path)[0][0], expected)


def sliding_sigmoid(model, data: np.ndarray, window: int, stride: int) -> np.ndarray:
    """An independent reference for sigmoid models: every window's sigmoid, averaged per pixel
    by hand (numpy), the windows flush with the right and bottom borders."""
    x = (torch.from_numpy(data.astype(np.float32)) - torch.tensor(MEAN).view(-1, 1, 1)) / torch.tensor(STD).view(-1, 1, 1)
    height, width = data.shape[1:]

    def starts(length: int) -> list[int]:
        return sorted({*range(0, length - window, stride), length - window})

    total = np.zeros((model.num_classes, height, width))
    count = np.zeros((height, width))
    for top in starts(height):
        for left in starts(width):
            with torch.no_grad():
                logits = model(x[None, :, top : top + window, left : left + window])[0]
            total[:, top : top + window, left : left + window] += torch.sigmoid(logits).numpy()
            count[top : top + window, left : left + window] += 1
    return total / count


@pytest.mark.parametrize("task, classes", [("binary", 1), ("multilabel", 3)])
def test_sigmoid_tasks_give_a_0_1_band_per_label(tmp_path, task, classes):
    data = scene_data(130, 110, seed=3)
    write_scene(tmp_path / "labels.tif", data)
    model = tiny_model(classes, task)
    paths = predict_scene(model, str(tmp_path / "labels.tif"), str(tmp_path / "out"), views=make_views(window=64, stride=40),
                          save="probs", precision="fp32", progress=False, threshold=0.5)
    mask, info = read(paths[0])
    probs = read(paths[1])[0]
    expected = sliding_sigmoid(model, data, 64, 40)
    np.testing.assert_allclose(probs, expected, atol=1e-5)
    assert mask.shape == (classes, 130, 110) and info["dtype"] == "uint8"
    np.testing.assert_array_equal(mask, (probs > 0.5).astype(np.uint8))
    assert info["names"] == tuple(f"c{i}" for i in range(classes))


def test_open_rows_hold_at_most_a_window_and_a_block():
    grid = SceneGrid(height=2000, width=30, window=(100, 30), stride=(70, 30))
    rows = OpenRows(grid, classes=2)
    written, largest = [], 0
    for index, top in enumerate(grid.tops):
        rows.add(top, 0, torch.ones(2, 100, 30) * (top + 1))
        largest = max(largest, rows.total.shape[1])
        upto = grid.tops[index + 1] if index + 1 < len(grid.tops) else grid.padded[0]
        written += [(first, block.shape[1]) for first, block in rows.finished(upto)]
    assert largest <= 100 + BLOCK
    assert [first for first, _ in written] == list(range(0, 2000, BLOCK)) and sum(n for _, n in written) == 2000


def test_which_tiffs_are_scenes(tmp_path):
    write_scene(tmp_path / "geo.tif", scene_data(20, 20))
    write_scene(tmp_path / "plain.tif", scene_data(20, 20), crs=None)
    assert is_scene(str(tmp_path / "geo.tif")) and not is_scene(str(tmp_path / "plain.tif"))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", rasterio.errors.NotGeoreferencedWarning)
        with rasterio.open(tmp_path / "large.tif", "w", driver="GTiff", height=4100, width=4100, count=1,
                           dtype="uint8", tiled=True, compress="deflate"):  # larger than SCENE_PIXELS: zeros
            pass
    assert is_scene(str(tmp_path / "large.tif"))
    (tmp_path / "photo.png").write_bytes(b"not even read")
    assert not is_scene(str(tmp_path / "photo.png"))


@pytest.fixture
def scene_checkpoint(tmp_path):
    path = tmp_path / "scene_model.safetensors"
    atrous.save_checkpoint(tiny_model(3), str(path))
    return path


def test_predict_command_takes_a_geotiff_window_by_window(capsys, tmp_path, scene_checkpoint):
    data = scene_data(140, 160, seed=4)
    write_scene(tmp_path / "field.tif", data)
    code, out, err = run(capsys, "predict", "--checkpoint", str(scene_checkpoint), str(tmp_path / "field.tif"),
                         "--out", str(tmp_path / "out"), "--slide", "96", "128", "--stride", "64", "80",
                         "--batch-size", "2", "--precision", "fp32", "--save", "probs", "--no-progress")
    assert code == 0, err
    assert "wrote 2 files" in out
    mask, info = read(tmp_path / "out" / "field.tif")
    assert info["crs"] == rasterio.crs.CRS.from_string(CRS) and info["transform"] == TRANSFORM
    model = atrous.load_checkpoint(str(scene_checkpoint)).eval()
    np.testing.assert_array_equal(mask[0], reference_scores(model, data).argmax(0).numpy())


def test_bad_scenes_are_one_line_errors(capsys, tmp_path, scene_checkpoint):
    write_scene(tmp_path / "three.tif", scene_data(40, 40, bands=3))
    (tmp_path / "broken.tif").write_bytes(b"II*\x00 a truncated tiff header")
    write_scene(tmp_path / "nan.tif", np.full((4, 40, 40), np.nan, np.float32))
    write_scene(tmp_path / "ok.tif", scene_data(40, 40))
    cases = [
        (["three.tif"], ("three.tif", "3 bands", "takes 4")),
        (["broken.tif"], ("broken.tif", "cannot open")),
        (["nan.tif"], ("nan.tif", "NaN")),
        (["ok.tif", "--save", "logits"], ("ok.tif", "probs")),
        (["ok.tif", "--crf", "dense"], ("ok.tif", "--crf")),
        (["ok.tif", "--scales", "1", "0.5"], ("scales",)),
    ]
    for argv, fragments in cases:
        code, _, err = run(capsys, "predict", "--checkpoint", str(scene_checkpoint), str(tmp_path / argv[0]),
                           *argv[1:], "--out", str(tmp_path / "out"), "--no-progress")
        assert code == 2, (argv, err)
        assert_one_line_error(err, *fragments)
    assert not any((tmp_path / "out").glob("*.tif"))  # nothing left half-written


def test_normalisation_for_other_bands_is_refused(tmp_path):
    write_scene(tmp_path / "four.tif", scene_data(40, 40))
    model = tiny_model(2)
    model.meta.update(mean=[0.5] * 3, std=[0.2] * 3)
    with pytest.raises(UserError, match="four.tif.*normalisation"):
        predict_scene(model, str(tmp_path / "four.tif"), str(tmp_path / "out"), progress=False)


def test_a_missing_rasterio_is_a_one_line_error(capsys, tmp_path, scene_checkpoint, monkeypatch):
    write_scene(tmp_path / "geo.tif", scene_data(40, 40))
    monkeypatch.setitem(sys.modules, "rasterio", None)  # `import rasterio` raises ImportError
    code, _, err = run(capsys, "predict", "--checkpoint", str(scene_checkpoint), str(tmp_path / "geo.tif"),
                       "--out", str(tmp_path / "out"), "--no-progress")
    assert code == 2
    assert_one_line_error(err, "geo.tif", "pip install 'atrous[geo]'")
