"""OpenVINO as a runtime: `atrous export --format openvino` writes an IR (.xml + .bin) whose f32
logits equal PyTorch's and whose rt_info carries the checkpoint's metadata; `.xml` files load
as models that eval, predict and atrous.infer run; int8 through NNCF; `--engine` chooses
torch, openvino or onnxruntime by hand or automatically; without openvino, one line naming
the extra."""

from __future__ import annotations

import json
import sys

import pytest
import torch

import atrous
from atrous.checkpoints.checkpoint import save_checkpoint
from atrous.checkpoints.exported import read_export_metadata
from atrous.errors import UserError
from atrous.inference.engines import on_engine, resolve_engine
from tests.test_cli import assert_one_line_error, run

pytest.importorskip("openvino", reason="openvino is not installed (pip install 'atrous[openvino]')")
from atrous.checkpoints.openvino_model import OpenVinoModel, on_openvino  # noqa: E402
from atrous.deployment.openvino import export_openvino  # noqa: E402


@pytest.fixture(scope="module")
def ir_file(small_unet, tmp_path_factory):
    out = tmp_path_factory.mktemp("ir") / "deploy" / "m.xml"
    export_openvino(small_unet, str(out), example_size=(40, 40))
    return out


def _images(*size, batch=2, seed=1):
    return torch.randn(batch, 3, *size, generator=torch.Generator().manual_seed(seed))


def test_the_ir_gives_pytorchs_logits_at_f32_and_carries_the_metadata(small_unet, ir_file):
    assert sorted(p.name for p in ir_file.parent.iterdir()) == ["m.bin", "m.xml"]  # nothing temporary left
    header = read_export_metadata(str(ir_file))  # read from the .xml, without openvino
    assert header["model"] == small_unet.config and header["meta"]["class_names"] == ["a", "b", "c"]
    assert header["export"]["dynamic"] is True and header["export"]["num_classes"] == 3
    loaded = atrous.load_checkpoint(str(ir_file))
    assert isinstance(loaded, OpenVinoModel) and loaded.precision == "fp32" and loaded.config == small_unet.config
    assert loaded.meta["std"] == [0.2, 0.25, 0.3] and loaded.num_classes == 3
    images = _images(45, 59)  # not the export's size, odd sides
    with torch.no_grad():
        expected = small_unet(images)
    got = loaded(images)
    assert got.shape == expected.shape and got.dtype == torch.float32
    assert (got - expected).abs().max() <= 1e-4 * (1 + expected.abs().max())
    # atrous.infer at fp32 keeps f32 arithmetic; at bf16 OpenVINO computes in bf16: close, not equal
    assert (atrous.infer(loaded, images, precision="fp32") - expected).abs().max() <= 1e-4 * (1 + expected.abs().max())
    bf16 = atrous.infer(loaded, images, precision="bf16")
    assert not torch.equal(bf16, got) and (bf16 - expected).abs().max() < 0.05 * (1 + expected.abs().max())


def test_weights_stay_fp32_in_the_bin(small_unet, ir_file):
    """OpenVINO compresses weights to fp16 by default; the export keeps them fp32."""
    weights = sum(m.weight.numel() for m in small_unet.modules() if isinstance(m, torch.nn.Conv2d))
    assert ir_file.with_suffix(".bin").stat().st_size >= 4 * weights  # fp16 would be 2 bytes each


def test_static_ir_takes_its_size_only(small_unet, tmp_path):
    export_openvino(small_unet, str(tmp_path / "s.xml"), example_size=(32, 48), dynamic=False)
    static = atrous.load_checkpoint(str(tmp_path / "s.xml"))
    images = _images(32, 48)
    with torch.no_grad():
        assert (static(images) - small_unet(images)).abs().max() <= 1e-4 * (1 + small_unet(images).abs().max())
    with pytest.raises(UserError, match="takes 32x48 images only"):
        static(images[..., :31, :48])


def test_cli_export_eval_and_predict_run_the_ir(tmp_path, capsys):
    torch.manual_seed(0)
    checkpoint = tmp_path / "m.safetensors"
    save_checkpoint(atrous.create_model("unet", 7, base_channels=8).eval(), str(checkpoint))  # synthetic's 7
    code, out, err = run(capsys, "export", "--checkpoint", str(checkpoint), "--out", str(tmp_path / "m.xml"),
                         "--height", "40", "--width", "40")
    assert code == 0 and "openvino" in out, err
    metrics = {}
    for name, path, engine in (("ir", "m.xml", "auto"), ("torch", "m.safetensors", "torch"),
                               ("converted", "m.safetensors", "openvino")):
        code, _, err = run(capsys, "eval", "--checkpoint", str(tmp_path / path), "--dataset", "synthetic",
                           "--synthetic-size", "48", "--max-images", "2", "--no-progress",
                           "--precision", "fp32", "--engine", engine, "--json", str(tmp_path / f"{name}.json"))
        assert code == 0, err
        metrics[name] = json.loads((tmp_path / f"{name}.json").read_text())
    for name in ("ir", "converted"):  # f32 arithmetic: the same labels as PyTorch's, so the same scores
        assert metrics[name]["pixel_accuracy"] == pytest.approx(metrics["torch"]["pixel_accuracy"], abs=1e-3)
    code, _, err = run(capsys, "predict", str(_image_file(tmp_path)), "--checkpoint", str(tmp_path / "m.xml"),
                       "--out", str(tmp_path / "pred"))
    assert code == 0, err
    assert any(p.suffix == ".png" for p in (tmp_path / "pred").iterdir())


def _image_file(folder):
    from PIL import Image

    path = folder / "scene.png"
    Image.fromarray((torch.rand(37, 45, 3) * 255).byte().numpy()).save(path)
    return path


def test_engines_are_chosen_automatically_and_by_hand(small_unet, ir_file):
    # a checkpoint runs in PyTorch (no conversion at every load), an exported IR in OpenVINO
    assert resolve_engine("auto", small_unet, "bf16") == "torch"
    assert resolve_engine("auto", small_unet, "fp32") == "torch"
    assert resolve_engine("auto", atrous.load_checkpoint(str(ir_file))) == "openvino"
    assert resolve_engine("openvino", small_unet, "bf16") == "openvino"
    assert on_engine(small_unet, "torch") is small_unet
    with pytest.raises(UserError, match="onnxruntime runs .onnx files") as caught:
        on_engine(small_unet, "onnxruntime")
    assert "\n" not in str(caught.value)
    with pytest.raises(UserError, match="engine torch runs checkpoints"):
        on_engine(atrous.load_checkpoint(str(ir_file)), "torch")


def test_an_onnx_file_runs_in_openvino_too(small_unet, tmp_path):
    pytest.importorskip("onnxruntime")
    from atrous.deployment.export import export_onnx

    export_onnx(small_unet, str(tmp_path / "m.onnx"), example_size=(40, 40))
    onnx_model = atrous.load_checkpoint(str(tmp_path / "m.onnx"))
    assert resolve_engine("auto", onnx_model) == "onnxruntime"
    in_openvino = on_engine(onnx_model, "openvino")
    assert isinstance(in_openvino, OpenVinoModel) and in_openvino.meta == onnx_model.meta
    images = _images(37, 53)
    assert (in_openvino(images) - onnx_model(images)).abs().max() <= 1e-4 * (1 + onnx_model(images).abs().max())


def test_without_openvino_one_line_names_the_extra(small_unet, ir_file, tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "openvino", None)  # import openvino now fails
    checkpoint = tmp_path / "m.safetensors"
    save_checkpoint(small_unet, str(checkpoint))
    code, _, err = run(capsys, "export", "--checkpoint", str(checkpoint), "--out", str(tmp_path / "m.xml"))
    assert code != 0
    assert_one_line_error(err, "atrous[openvino]")
    code, _, err = run(capsys, "eval", "--checkpoint", str(ir_file), "--dataset", "synthetic", "--num-classes", "3",
                       "--max-images", "1", "--no-progress")
    assert code != 0
    assert_one_line_error(err, "atrous[openvino]")
    assert read_export_metadata(str(ir_file))["model"] == small_unet.config  # the metadata needs no openvino


def test_export_refuses_an_openvino_name_that_is_not_xml(small_unet, tmp_path, capsys):
    checkpoint = tmp_path / "m.safetensors"
    save_checkpoint(small_unet, str(checkpoint))
    code, _, err = run(capsys, "export", "--checkpoint", str(checkpoint), "--format", "openvino",
                       "--out", str(tmp_path / "m.onnx"))
    assert code != 0
    assert_one_line_error(err, ".xml")


def test_int8_ir_by_nncf(small_unet, tmp_path):
    pytest.importorskip("nncf", reason="nncf is not installed (pip install 'atrous[openvino]')")
    import openvino as ov

    from atrous.deployment.openvino import export_openvino_int8

    calibration = [_images(40, 40, batch=1, seed=s) for s in range(4)]
    agreement = export_openvino_int8(small_unet, str(tmp_path / "q.xml"), calibration, source="random",
                                     min_agreement=0.0)
    assert 0.0 <= agreement <= 1.0
    ops = {op.get_type_name() for op in ov.Core().read_model(str(tmp_path / "q.xml")).get_ops()}
    assert "FakeQuantize" in ops  # NNCF's int8 ranges
    header = read_export_metadata(str(tmp_path / "q.xml"))
    assert header["export"]["precision"] == "int8" and header["export"]["quantization"]["tool"] == "nncf.quantize"
    int8 = atrous.load_checkpoint(str(tmp_path / "q.xml"))
    assert int8.precision == "int8" and int8.precision_run("bf16") == "int8"
    images = _images(37, 53)
    with torch.no_grad():
        expected = small_unet(images)
    got = int8(images)
    assert got.shape == expected.shape
    assert not torch.equal(got, expected) and (got - expected).abs().max() < 0.5 * (1 + expected.abs().max())


def test_cli_int8_ir_calibrated_on_the_dataset(tiny_checkpoint, tmp_path, capsys):
    pytest.importorskip("nncf", reason="nncf is not installed (pip install 'atrous[openvino]')")
    out = tmp_path / "q.xml"
    code, printed, err = run(capsys, "export", "--checkpoint", str(tiny_checkpoint), "--int8", "--calibrate-dataset",
                             "synthetic", "--calibrate-images", "2", "--out", str(out))
    assert code == 0, err
    assert "int8 OpenVINO" in printed and sorted(p.name for p in tmp_path.iterdir()) == ["q.bin", "q.xml"]
    calibration = read_export_metadata(str(out))["export"]["quantization"]["calibration"]
    assert calibration == {"images": 2, "source": calibration["source"]} and "synthetic train" in calibration["source"]
    code, _, err = run(capsys, "export", "--checkpoint", str(tiny_checkpoint), "--int8", "--calibrate-dataset",
                       "synthetic", "--calibrate-method", "entropy", "--out", str(tmp_path / "r.xml"))
    assert code != 0
    assert_one_line_error(err, "--calibrate-method")


def test_serve_runs_the_model_in_openvino(small_unet, tmp_path, monkeypatch):
    """`atrous serve --engine openvino`: the mask is the argmax of the converted model's f32
    logits, which are PyTorch's."""
    pytest.importorskip("starlette")
    pytest.importorskip("httpx", reason="starlette's TestClient needs httpx")
    import io

    import numpy as np
    from PIL import Image
    from starlette.testclient import TestClient

    import atrous.inference.engines as engines
    from atrous.serve import ServeConfig, build_app

    converted = []
    monkeypatch.setattr(engines, "on_openvino", lambda model: converted.append(on_openvino(model)) or converted[-1])
    checkpoint = tmp_path / "m.safetensors"
    save_checkpoint(small_unet, str(checkpoint))
    image = (np.random.default_rng(0).random((37, 53, 3)) * 255).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    with TestClient(build_app(ServeConfig(str(checkpoint), engine="openvino", precision="fp32"))) as client:
        response = client.post("/predict?output=mask", files={"image": ("s.png", buffer.getvalue(), "image/png")})
    assert response.status_code == 200 and len(converted) == 1
    mean, std = torch.tensor([0.5, 0.4, 0.3])[:, None, None], torch.tensor([0.2, 0.25, 0.3])[:, None, None]
    x = (torch.from_numpy(image).permute(2, 0, 1).float() / 255.0 - mean) / std
    with torch.no_grad():
        expected = small_unet(x[None]).argmax(1)[0].numpy()
    np.testing.assert_array_equal(np.asarray(Image.open(io.BytesIO(response.content))), expected)
