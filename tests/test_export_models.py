"""Every registered model exports to ONNX with free batch, height and width, and
onnxruntime gives the PyTorch model's logits at two odd sizes. Both formats come from one
trace (`atrous.deployment.export`), so TorchScript is run here for two of the models whose trace
needed rewrites (unpooling; the multi-scale size arithmetic). The rewrites (with PSPNet's
adaptive pooling as region means) give the results of the operations they replace."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import atrous
from atrous.deployment.export import export_onnx, export_torchscript
from atrous.layers.pyramid_pooling import AdaptiveAvgPool2d
from atrous.models.multiscale import scaled_length
from atrous.models.segnet import pool_with_indices, unpool

# small settings: a few seconds per model, mostly ONNX's exporter
SMALL = {
    "attention_to_scale": dict(base="deeplab_v2", backbone="resnet18"),  # scales 1 and 0.5
    "deeplab_v1": dict(fc_channels=64),
    "deeplab_v2": dict(backbone="resnet18", input_scales=(1.0, 0.5)),
    "deeplab_v3": dict(backbone="resnet18"),
    "deeplab_v3plus": dict(backbone="resnet18"),
    "fcn16s": dict(backbone="resnet18", output_stride=32),
    "fcn32s": dict(backbone="resnet18"),
    "fcn8s": dict(backbone="resnet18", output_stride=32),
    "pspnet": dict(backbone="resnet18"),
    "refinenet": dict(backbone="resnet18", channels=16),
    "segnet_basic": dict(channels=16),
    "unet": dict(base_channels=8),
}
# odd sizes, not multiples of any model's divisor, kept small (SegNet and DeepLab v1 are
# full-width VGG16s)
SIZES = [(1, 3, 21, 35), (2, 3, 45, 19)]
TOLERANCE = 1e-4
pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.load` is deprecated:FutureWarning")


def _model(name: str) -> atrous.models.SegmentationModel:
    """`name` at its small settings, batch-norm statistics set by one training-mode pass."""
    torch.manual_seed(0)
    model = atrous.create_model(name, 3, **SMALL.get(name, {}))
    model.train()
    with torch.no_grad():
        model(torch.randn(2, 3, 32, 32) * 2 + 0.5)
    return model.eval()


def _inputs():
    generator = torch.Generator().manual_seed(1)
    return [torch.randn(*shape, generator=generator) for shape in SIZES]


@pytest.mark.parametrize("name", atrous.list_models())
def test_every_model_exports_to_onnx_with_free_sizes(name, tmp_path):
    pytest.importorskip("onnx", reason="onnx is not installed (pip install 'atrous[export]')")
    ort = pytest.importorskip("onnxruntime", reason="onnxruntime is not installed (pip install 'atrous[test]')")
    model = _model(name)
    export_onnx(model, str(tmp_path / "m.onnx"), example_size=(33, 40))
    session = ort.InferenceSession(str(tmp_path / "m.onnx"), providers=["CPUExecutionProvider"])
    for x in _inputs():
        with torch.no_grad():
            expected = model(x).numpy()
        got = session.run(None, {"input": x.numpy()})[0]
        assert got.shape == expected.shape == (x.shape[0], 3, *x.shape[2:])
        # float rounding grows with the logits (RefineNet's reach 30): relative and absolute
        np.testing.assert_allclose(got, expected, rtol=1e-5, atol=TOLERANCE, err_msg=f"{name} {tuple(x.shape)}")


@pytest.mark.parametrize("name", ["segnet_basic", "attention_to_scale"])
def test_rewritten_models_export_to_torchscript(name, tmp_path):
    model = _model(name)
    export_torchscript(model, str(tmp_path / "m.pt"), example_size=(33, 40))
    scripted = torch.jit.load(str(tmp_path / "m.pt"))
    for x in _inputs():
        with torch.no_grad():
            assert (scripted(x) - model(x)).abs().max() <= TOLERANCE, (name, x.shape)


def test_unpool_is_max_unpool2d_with_its_gradient():
    x = torch.randn(2, 5, 14, 22, generator=torch.Generator().manual_seed(0))
    pooled, memory = pool_with_indices(x)
    values = pooled.detach().requires_grad_(True)
    reference = pooled.detach().requires_grad_(True)
    got = unpool(values, memory)
    expected = F.max_unpool2d(reference, memory[0], 2, stride=2, output_size=x.shape[-2:])
    assert torch.equal(got, expected)
    weights = torch.randn(got.shape, generator=torch.Generator().manual_seed(1))
    (got * weights).sum().backward()
    (expected * weights).sum().backward()
    assert torch.equal(values.grad, reference.grad)


@pytest.mark.parametrize("bins", [1, 2, 3, 6])
def test_adaptive_pooling_as_region_means(bins):
    generator = torch.Generator().manual_seed(bins)
    for size in [(1, 1), (2, 5), (7, 13), (45, 60)]:  # fewer rows than bins included
        x = torch.randn(2, 4, *size, generator=generator)
        got = AdaptiveAvgPool2d(bins)(x)
        assert got.shape == (2, 4, bins, bins)
        assert torch.allclose(got, F.adaptive_avg_pool2d(x, bins), atol=1e-6), size


def test_scaled_length_rounds_as_python_in_the_graph():
    for length in [1, 2, 7, 33, 45, 97, 131, 360, 1025]:
        for scale in [0.5, 0.75, 1.25, 1.5, 1.75, 0.1]:
            expected = max(1, round(length * scale))  # half to even: round(16.5) == 16
            assert scaled_length(length, scale) == expected
            assert scaled_length(torch.tensor(length), scale).item() == expected, (length, scale)
