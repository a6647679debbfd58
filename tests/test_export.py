"""Export to ONNX and TorchScript: the exported graph gives the PyTorch model's logits at any
size (checked with onnxruntime), carries the checkpoint's metadata, and the command line
fails in one line without leaving a half-written file."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch

import atrous
from atrous.checkpoints.exported import read_export_metadata
from atrous.deployment.export import export_onnx, run_export
from atrous.errors import UserError
from tests.test_cli import assert_one_line_error, run

MODELS = {
    "deeplab_v3plus": dict(backbone="resnet18"),
    "unet": dict(base_channels=8),
}
META = dict(class_names=["road", "river", "car"], palette=[[128, 64, 128], [0, 0, 255], [255, 0, 0]],
            mean=[0.5, 0.4, 0.3], std=[0.2, 0.25, 0.3])
TOLERANCE = 1e-4
pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.load` is deprecated:FutureWarning")


def _initialised(name: str) -> atrous.models.SegmentationModel:
    """A model whose batch-norm statistics are not the identity: one forward pass in training."""
    torch.manual_seed(0)
    model = atrous.create_model(name, 3, **MODELS[name])
    model.train()
    with torch.no_grad():
        model(torch.randn(2, 3, 32, 32) * 2 + 0.5)
    return model.eval()


@pytest.fixture(scope="module", params=sorted(MODELS))
def checkpoint(request, tmp_path_factory):
    path = tmp_path_factory.mktemp(request.param) / "model.safetensors"
    atrous.save_checkpoint(_initialised(request.param), str(path), **META)
    return path


@pytest.fixture(scope="module")
def unet_checkpoint(tmp_path_factory):
    path = tmp_path_factory.mktemp("unet_cli") / "model.safetensors"
    atrous.save_checkpoint(_initialised("unet"), str(path), **META)
    return path


def _session(path):
    ort = pytest.importorskip("onnxruntime", reason="onnxruntime is not installed (pip install 'atrous[test]')")
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def _max_diff(model, run_exported, shape) -> float:
    x = torch.randn(*shape, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = model(x).numpy()
    got = run_exported(x)
    assert got.shape == expected.shape
    return float(np.abs(got - expected).max())


@pytest.fixture(scope="module")
def onnx_file(checkpoint):
    pytest.importorskip("onnx", reason="onnx is not installed (pip install 'atrous[export]')")
    out = checkpoint.parent / "model.onnx"
    # 32x32 is a multiple of the models' divisor: the graph must pad other sizes all the same
    run_export(str(checkpoint), str(out), example_size=(32, 32))
    return out


def test_onnx_dynamic_matches_pytorch_at_any_size(checkpoint, onnx_file):
    session = _session(onnx_file)
    model = atrous.load_checkpoint(str(checkpoint))
    for shape in [(2, 3, 97, 131), (1, 3, 64, 96)]:
        diff = _max_diff(model, lambda x: session.run(None, {"input": x.numpy()})[0], shape)
        assert diff <= TOLERANCE, (shape, diff)


def test_onnx_metadata_round_trip(checkpoint, onnx_file):
    session = _session(onnx_file)
    props = session.get_modelmeta().custom_metadata_map
    for key in ("class_names", "palette", "mean", "std"):
        assert json.loads(props[key]) == META[key]
    header = read_export_metadata(str(onnx_file))
    model = atrous.load_checkpoint(str(checkpoint))
    assert header["model"] == model.config == json.loads(props["model"])
    assert header["meta"] == model.meta
    assert header["export"]["dynamic"] is True


def test_onnx_static_has_fixed_shape(unet_checkpoint, tmp_path):
    pytest.importorskip("onnx", reason="onnx is not installed (pip install 'atrous[export]')")
    model = atrous.load_checkpoint(str(unet_checkpoint))
    out = tmp_path / "static.onnx"
    export_onnx(model, str(out), example_size=(45, 70), dynamic=False, opset=13)
    session = _session(out)
    assert session.get_inputs()[0].shape == [1, 3, 45, 70]
    assert _max_diff(model, lambda x: session.run(None, {"input": x.numpy()})[0], (1, 3, 45, 70)) <= TOLERANCE
    assert read_export_metadata(str(out))["export"]["size"] == [45, 70]


def test_torchscript_round_trip(unet_checkpoint, tmp_path):
    out = tmp_path / "model.pt"
    assert run_export(str(unet_checkpoint), str(out), example_size=(32, 32)) == "torchscript"
    model = atrous.load_checkpoint(str(unet_checkpoint))
    loaded = torch.jit.load(str(out))
    assert _max_diff(model, lambda x: loaded(x).detach().numpy(), (2, 3, 97, 131)) <= TOLERANCE
    header = read_export_metadata(str(out))
    assert header["meta"]["class_names"] == META["class_names"]
    assert header["model"] == model.config


def test_cli_export_writes_onnx(capsys, unet_checkpoint, tmp_path):
    pytest.importorskip("onnx", reason="onnx is not installed (pip install 'atrous[export]')")
    out = tmp_path / "deploy" / "unet.model"
    code, stdout, err = run(capsys, "export", "--checkpoint", str(unet_checkpoint), "--out", str(out),
                            "--format", "onnx", "--height", "40", "--width", "40", "--static")
    assert code == 0, err
    assert "static" in stdout
    assert read_export_metadata(str(out))["export"]["size"] == [40, 40]
    assert os.listdir(out.parent) == ["unet.model"]  # no temporary file left behind


@pytest.mark.parametrize(
    ("argv", "fragments"),
    [
        (["--checkpoint", "{tmp}/missing.safetensors", "--out", "{tmp}/m.onnx"], ["missing.safetensors", "not found"]),
        (["--checkpoint", "{ckpt}", "--out", "{tmp}/m.bin"], ["m.bin", "--format"]),
        (["--checkpoint", "{ckpt}", "--out", "{tmp}/m.pt", "--opset", "13"], ["--opset"]),
        (["--checkpoint", "{ckpt}", "--out", "{tmp}"], ["is a folder"]),
        (["--checkpoint", "{ckpt}", "--out", "{tmp}/m.onnx", "--height", "0"], ["--height"]),
        (["--checkpoint", "{ckpt}", "--out", "{tmp}/m.onnx", "--format", "tflite"], ["--format", "tflite"]),
        (["--checkpoint", "{ckpt}", "--out", "{tmp}/m.onnx", "--static", "--dynamic"], ["--dynamic"]),
        (["--checkpoint", "{ckpt}", "--out", "{tmp}/afile/m.onnx"], ["cannot be written", "afile is a file, not a folder"]),
        (["--checkpoint", "{ckpt}", "--out", "{tmp}/m.onnx", "--opset", "99"], ["--opset", "99"]),
    ],
    ids=["missing-checkpoint", "unknown-suffix", "opset-torchscript", "out-folder", "bad-height",
         "bad-format", "static-and-dynamic", "unwritable", "bad-opset"],
)
def test_cli_errors_are_one_line(capsys, unet_checkpoint, tmp_path, argv, fragments):
    if any(a.endswith(".onnx") for a in argv):
        pytest.importorskip("onnx", reason="onnx is not installed (pip install 'atrous[export]')")
    (tmp_path / "afile").write_text("a file, not a folder")
    args = [a.format(tmp=tmp_path, ckpt=unet_checkpoint) for a in argv]
    code, _, err = run(capsys, "export", *args)
    assert code == 2
    assert_one_line_error(err, *fragments)
    assert sorted(os.listdir(tmp_path)) == ["afile"]  # nothing written, nothing half-written


def test_failed_export_keeps_the_existing_file(unet_checkpoint, tmp_path, monkeypatch):
    pytest.importorskip("onnx", reason="onnx is not installed (pip install 'atrous[export]')")
    out = tmp_path / "m.onnx"
    out.write_bytes(b"the previous export")

    def broken_export(*args, **kwargs):
        with open(args[2], "wb") as handle:  # half a file, then the exporter gives up
            handle.write(b"half")
        raise RuntimeError("Exporting the operator 'aten::frobnicate' to ONNX opset 17 is not supported.\nmore")

    monkeypatch.setattr(torch.onnx, "export", broken_export)
    with pytest.raises(UserError, match="model 'unet' cannot be exported to ONNX: Exporting the operator"):
        run_export(str(unet_checkpoint), str(out), example_size=(32, 32))
    assert out.read_bytes() == b"the previous export"
    assert os.listdir(tmp_path) == ["m.onnx"]
