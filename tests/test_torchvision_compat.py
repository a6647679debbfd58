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


@pytest.mark.parametrize(
    "name,aux",
    [("fcn_resnet50", True), ("deeplabv3_resnet50", True), ("deeplabv3_resnet101", False)],
)
def test_same_outputs_as_torchvision(name: str, aux: bool) -> None:
    torch.manual_seed(0)
    reference = getattr(segmentation, name)(weights=None, weights_backbone=None, num_classes=5, aux_loss=aux)
    randomise_batch_norm(reference)
    reference.eval()
    model = atrous.from_torchvision(name, reference.state_dict()).eval()
    assert hasattr(model, "aux_head") == aux
    x = torch.randn(1, 3, 48, 64)
    with torch.no_grad():
        expected = reference(x)
        got = model(x)
    assert got.shape == expected["out"].shape
    assert (got - expected["out"]).abs().max() <= 1e-4
    if aux:  # kept as our aux head, on the same layer3 features
        with torch.no_grad():
            features = model.backbone(x)
            aux_logits = model.aux_head(features[1] if name.startswith("fcn") else features[-2])
            aux_logits = F.interpolate(aux_logits, size=x.shape[-2:], mode="bilinear", align_corners=False)
        assert (aux_logits - expected["aux"]).abs().max() <= 1e-4


def test_unknown_name_is_refused() -> None:
    with pytest.raises(ValueError, match="supports"):
        atrous.from_torchvision("lraspp_mobilenet_v3_large", {})
