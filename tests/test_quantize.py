"""int8 export (`atrous export --int8`) and exported ONNX files as models: the int8 graph is
QDQ with per-channel int8 weights, carries the checkpoint's metadata, agrees with the fp32
model, and runs through load_checkpoint, atrous.infer and `atrous eval` unchanged; an fp32
ONNX export loaded as a model gives PyTorch's logits; bad options end in one line."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch

import atrous
from atrous.checkpoints.exported import read_export_metadata
from atrous.checkpoints.meta import normalisation
from atrous.checkpoints.onnx_model import OnnxModel
from atrous.data import build_dataset, eval_transform
from atrous.deployment.export import export_onnx
from atrous.errors import UserError
from tests.test_cli import assert_one_line_error, run

pytest.importorskip("onnx", reason="onnx is not installed (pip install 'atrous[export]')")
pytest.importorskip("onnxruntime", reason="onnxruntime is not installed (pip install 'atrous[test]')")
CALIBRATION = 4


@pytest.fixture(scope="module")
def int8_file(tiny_checkpoint, tmp_path_factory):
    out = tmp_path_factory.mktemp("int8") / "deploy" / "m.int8.onnx"
    code = atrous.cli.main(["export", "--checkpoint", str(tiny_checkpoint), "--int8", "--calibrate-dataset",
                            "synthetic", "--calibrate-images", str(CALIBRATION), "--out", str(out)])
    assert code == 0
    return out


def _val_images(model, count=3):
    """Held-out synthetic scenes (the int8 graph was calibrated on the train split)."""
    dataset = build_dataset("synthetic", "val", synthetic_size=64)
    normalise = eval_transform(*normalisation(model.meta))
    return torch.stack([normalise(*dataset[i], None)[0] for i in range(count)])


def test_int8_graph_is_qdq_with_per_channel_int8_weights(int8_file):
    import onnx

    assert os.listdir(int8_file.parent) == ["m.int8.onnx"]  # nothing temporary left behind
    graph = onnx.load(str(int8_file)).graph
    ops = {node.op_type for node in graph.node}
    assert {"QuantizeLinear", "DequantizeLinear", "Conv"} <= ops
    int8_weights = {init.name for init in graph.initializer if init.data_type == onnx.TensorProto.INT8}
    assert int8_weights
    scales = {init.name: onnx.numpy_helper.to_array(init) for init in graph.initializer}
    per_channel = [node for node in graph.node
                   if node.op_type == "DequantizeLinear" and node.input[0] in int8_weights
                   and scales[node.input[1]].size > 1]
    assert per_channel  # one scale per output channel


def test_int8_metadata_tells_how_it_was_made(int8_file, tiny_checkpoint):
    header = read_export_metadata(str(int8_file))
    fp32 = atrous.load_checkpoint(str(tiny_checkpoint))
    assert header["model"] == fp32.config
    assert header["meta"]["class_names"] == fp32.meta["class_names"]
    assert header["export"]["precision"] == "int8"
    assert header["export"]["dynamic"] is True
    calibration = header["export"]["quantization"]["calibration"]
    assert calibration["images"] == CALIBRATION and calibration["method"] == "minmax"


def test_int8_model_agrees_with_fp32_through_infer(int8_file, tiny_checkpoint):
    fp32 = atrous.load_checkpoint(str(tiny_checkpoint))
    int8 = atrous.load_checkpoint(str(int8_file))
    assert isinstance(int8, OnnxModel) and int8.precision == "int8"
    assert (int8.num_classes, int8.in_channels, int8.meta) == (fp32.num_classes, fp32.in_channels, fp32.meta)
    images = _val_images(fp32)[..., :61, :53]  # odd size, not the calibration size
    with torch.no_grad():
        expected = fp32(images)
    got = int8(images)
    assert got.shape == expected.shape and got.dtype == torch.float32
    assert (got.argmax(1) == expected.argmax(1)).float().mean() >= 0.9
    # the inference path's default precision (autocast, channels-last) leaves the graph alone
    assert torch.equal(atrous.infer(int8, images), got)
    flipped = atrous.infer(int8, images, flip=True, precision="fp32")
    assert flipped.shape == got.shape


def test_fp32_onnx_loads_as_the_same_model(small_unet, tmp_path):
    export_onnx(small_unet, str(tmp_path / "m.onnx"), example_size=(40, 40))
    loaded = atrous.load_checkpoint(str(tmp_path / "m.onnx"))
    assert loaded.precision == "fp32" and loaded.config == small_unet.config
    assert loaded.meta["class_names"] == ["a", "b", "c"] and loaded.meta["std"] == [0.2, 0.25, 0.3]
    images = torch.randn(2, 3, 45, 59, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert (loaded(images) - small_unet(images)).abs().max() <= 1e-4


def test_static_onnx_model_names_the_size_it_takes(small_unet, tmp_path):
    export_onnx(small_unet, str(tmp_path / "s.onnx"), example_size=(32, 48), dynamic=False)
    static = atrous.load_checkpoint(str(tmp_path / "s.onnx"))
    images = torch.randn(2, 3, 32, 48, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        assert (static(images) - small_unet(images)).abs().max() <= 1e-4  # a batch of two, one at a time
    with pytest.raises(UserError, match="takes 32x48 images only"):
        static(images[..., :31, :48])


def test_eval_cli_runs_the_int8_file(capsys, int8_file, tiny_checkpoint, tmp_path):
    metrics = {}
    for name, path in (("int8", int8_file), ("fp32", tiny_checkpoint)):
        code, _, err = run(capsys, "eval", "--checkpoint", str(path), "--dataset", "synthetic", "--split", "val",
                           "--synthetic-size", "64", "--max-images", "4", "--no-progress",
                           "--json", str(tmp_path / f"{name}.json"))
        assert code == 0, err
        metrics[name] = json.loads((tmp_path / f"{name}.json").read_text())
    assert abs(metrics["int8"]["pixel_accuracy"] - metrics["fp32"]["pixel_accuracy"]) <= 0.05
    assert metrics["int8"]["inference"]["precision"] == "int8"


@pytest.mark.parametrize(
    ("argv", "fragments"),
    [
        (["--int8", "--out", "{tmp}/m.onnx"], ["--calibrate-dataset"]),
        (["--int8", "--calibrate-dataset", "synthetic", "--out", "{tmp}/m.pt"], ["--int8", ".onnx"]),
        (["--int8", "--calibrate-dataset", "synthetic", "--static", "--out", "{tmp}/m.onnx"], ["--static"]),
        (["--int8", "--calibrate-dataset", "synthetic", "--calibrate-images", "0", "--out", "{tmp}/m.onnx"],
         ["--calibrate-images"]),
        (["--int8", "--calibrate-dataset", "synthetic", "--calibrate-method", "best", "--out", "{tmp}/m.onnx"],
         ["--calibrate-method", "best"]),
        (["--calibrate-dataset", "synthetic", "--out", "{tmp}/m.onnx"], ["--calibrate-dataset", "--int8"]),
        (["--int8", "--calibrate-dataset", "camvid", "--data-root", "{tmp}/nowhere", "--out", "{tmp}/m.onnx"],
         ["nowhere"]),
    ],
    ids=["no-dataset", "torchscript", "static", "no-images", "bad-method", "dataset-without-int8", "no-data"],
)
def test_int8_cli_errors_are_one_line(capsys, tiny_checkpoint, tmp_path, argv, fragments):
    args = [a.format(tmp=tmp_path) for a in argv]
    code, _, err = run(capsys, "export", "--checkpoint", str(tiny_checkpoint), *args)
    assert code == 2
    assert_one_line_error(err, *fragments)
    assert os.listdir(tmp_path) == []  # nothing written, nothing half-written


def test_damaged_onnx_file_is_a_one_line_error(capsys, tmp_path):
    bad = tmp_path / "m.onnx"
    bad.write_bytes(b"\x08\x07garbage that is not a protobuf" * 3)
    code, _, err = run(capsys, "eval", "--checkpoint", str(bad), "--dataset", "synthetic", "--no-progress")
    assert code == 2
    assert_one_line_error(err, "m.onnx")
    code, _, err = run(capsys, "eval", "--checkpoint", str(tmp_path / "gone.onnx"), "--dataset", "synthetic")
    assert code == 2
    assert_one_line_error(err, "gone.onnx", "not found")


def test_calibration_images_spread_over_the_split():
    from atrous.deployment.int8 import calibration_images

    dataset = build_dataset("synthetic", "train", synthetic_size=32, synthetic_length=10)
    images = calibration_images(dataset, 4, [0.5, 0.5, 0.5], [0.25, 0.25, 0.25])
    assert len(images) == 4 and images[0].shape == (1, 3, 32, 32)
    raw = dataset[9][0].float()  # the last image is among them: evenly spaced over the split
    assert torch.allclose(images[-1][0], (raw / 255 - 0.5) / 0.25)
    assert len(calibration_images(dataset, 50, [0.5] * 3, [0.25] * 3)) == 10
    assert np.isclose(float(images[0].mean()), float(((dataset[0][0].float() / 255 - 0.5) / 0.25).mean()))


def test_int8_of_a_trained_model_keeps_its_labels_and_its_miou(demo_run, tmp_path):
    """A model that has learned (the demo's, 40 iterations; its labels vary), exported to int8,
    judged on held-out scenes against thresholds of this test's own, stricter than the
    exporter's 90 % check: 97 % of the labels the same, mIoU within one point (measured: 99.5 %
    of the labels, mIoU 0.5611 fp32 against 0.5608 int8)."""
    from atrous.inference.evaluate import evaluate

    checkpoint = demo_run[0] / "model.safetensors"
    out = tmp_path / "m.int8.onnx"
    assert atrous.cli.main(["export", "--checkpoint", str(checkpoint), "--int8", "--calibrate-dataset", "synthetic",
                            "--calibrate-images", "16", "--out", str(out)]) == 0
    fp32, int8 = atrous.load_checkpoint(str(checkpoint)).eval(), atrous.load_checkpoint(str(out))
    dataset = torch.utils.data.Subset(build_dataset("synthetic", "val"), range(24))
    normalise = eval_transform(*normalisation(fp32.meta))
    images = torch.stack([normalise(*dataset[i], None)[0] for i in range(8)])
    with torch.no_grad():
        expected = fp32(images).argmax(1)
    got = int8(images).argmax(1)
    assert len(expected.unique()) >= 4, "the test needs a model whose labels vary"
    assert (got == expected).float().mean() >= 0.97
    scores = {name: evaluate(model, dataset, precision="fp32", progress=False)["mIoU"]
              for name, model in (("fp32", fp32), ("int8", int8))}
    assert scores["fp32"] > 0.35 and abs(scores["int8"] - scores["fp32"]) <= 0.01, scores
