"""atrous.from_torchvision gives torchvision's outputs with torchvision's weights."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import atrous

segmentation = pytest.importorskip("torchvision.models.segmentation")


def randomise_batch_norm(model: torch.nn.Module) -> None:
    """Non-trivial running statistics, so that a BN mapped to the wrong place shows."""
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.uniform_(-0.2, 0.2)
            module.running_var.uniform_(0.5, 2.0)
            module.weight.data.uniform_(0.5, 1.5)
            module.bias.data.uniform_(-0.2, 0.2)


def calibrate_batch_norm(model: torch.nn.Module) -> None:
    """Random affine parameters and running statistics measured on a random batch, so that
    activations keep their scale through the depth of a randomly initialised network (with
    arbitrary statistics a MobileNet's output is nearly constant, and a mistake hides)."""
    generator = torch.Generator().manual_seed(1)
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.momentum = 1.0  # the statistics of this one batch
            module.weight.data = torch.rand(module.weight.shape, generator=generator) + 0.5
            module.bias.data = torch.rand(module.bias.shape, generator=generator) - 0.5
    model.train()
    with torch.no_grad():
        model(torch.randn(2, 3, 64, 64, generator=generator))
    model.eval()


@pytest.mark.parametrize(
    "name,aux",
    [("fcn_resnet50", True), ("fcn_resnet101", False), ("deeplabv3_resnet50", True), ("deeplabv3_resnet101", False),
     ("deeplabv3_mobilenet_v3_large", True), ("lraspp_mobilenet_v3_large", False)],
)
def test_same_outputs_as_torchvision_at_any_size(name: str, aux: bool, tmp_path) -> None:
    torch.manual_seed(0)
    options = {} if name.startswith("lraspp") else {"aux_loss": aux}
    reference = getattr(segmentation, name)(weights=None, weights_backbone=None, num_classes=5, **options)
    calibrate_batch_norm(reference)
    model = atrous.from_torchvision(name, reference.state_dict()).eval()
    assert hasattr(model, "aux_head") == aux
    if name.startswith("lraspp"):  # the options that reproduce torchvision survive a checkpoint
        atrous.save_checkpoint(model, str(tmp_path / "m.safetensors"))
        model = atrous.load_checkpoint(str(tmp_path / "m.safetensors")).eval()
    for size in [(97, 131), (61, 46)]:  # odd, and neither a multiple of the output stride
        x = torch.randn(1, 3, *size)
        with torch.no_grad():
            expected = reference(x)
            got = model(x)
        assert got.shape == expected["out"].shape
        assert expected["out"].std() > 0.1, "the test needs outputs that vary"
        assert (got - expected["out"]).abs().max() <= 1e-4 * (1 + expected["out"].abs().max())
    if aux:  # kept as our aux head, on the same features
        with torch.no_grad():
            features = model.backbone(x)
            aux_logits = model.aux_head(features[1] if name.startswith("fcn") else features[-2])
            aux_logits = F.interpolate(aux_logits, size=x.shape[-2:], mode="bilinear", align_corners=False)
        assert (aux_logits - expected["aux"]).abs().max() <= 1e-4 * (1 + expected["aux"].abs().max())


def test_unknown_name_is_refused() -> None:
    with pytest.raises(ValueError, match="supports"):
        atrous.from_torchvision("deeplabv3_mobilenet_v3_small", {})
    with pytest.raises(ValueError, match="is it torchvision's"):
        atrous.from_torchvision("lraspp_mobilenet_v3_large", {"classifier.4.weight": torch.zeros(1)})
