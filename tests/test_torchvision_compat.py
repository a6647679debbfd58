"""atrous.from_torchvision gives torchvision's outputs with torchvision's weights."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torchvision.models import segmentation

import atrous


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


# ---- DeepLab v3 in the paper's defaults against torchvision ----------------------------------
# atrous' `deeplab_v3` as shipped (Chen et al. 2017: multi-grid (1, 2, 4), ASPP 12/24/36 at output
# stride 8, no extra head convolution) differs from torchvision's deeplabv3_resnet50 in three named
# places. The test edits torchvision's model by hand where the paper says otherwise, so that the
# maths coincides, then compares with the same weights; each difference is shown to matter.
# Coinciding without edits: the ResNet-50 (v1.5, stride in the 3x3 conv), layer3 and layer4 dilated
# for output stride 8, ASPP rates 12/24/36 with image pooling and a 1x1 projection to 256 channels.


def paper_torchvision_deeplabv3(head_identity: bool = True, multi_grid: bool = True) -> torch.nn.Module:
    torch.manual_seed(0)
    reference = segmentation.deeplabv3_resnet50(weights=None, weights_backbone=None, num_classes=5, aux_loss=False)
    calibrate_batch_norm(reference)
    if multi_grid:  # Sec. 3.2: layer4's blocks at rate 4 * (1, 2, 4) at output stride 8
        for block, rate in zip(reference.backbone.layer4, (4, 8, 16), strict=True):
            block.conv2.dilation, block.conv2.padding = (rate, rate), (rate, rate)
    if head_identity:  # torchvision's extra 3x3 conv-BN-ReLU after ASPP, made the identity
        conv, norm = reference.classifier[1], reference.classifier[2]
        with torch.no_grad():
            conv.weight.zero_()
            conv.weight[:, :, 1, 1] = torch.eye(conv.out_channels)
            norm.running_mean.zero_(), norm.running_var.fill_(1 - norm.eps)
            norm.weight.fill_(1), norm.bias.zero_()
        # (ASPP's projection ends in a ReLU, so the ReLU after it passes its input through)
    return reference.eval()


def paper_atrous_deeplabv3(reference: torch.nn.Module) -> torch.nn.Module:
    converted = atrous.from_torchvision("deeplabv3_resnet50", reference.state_dict())
    model = atrous.create_model("deeplab_v3", 5, backbone="resnet50", output_stride=8)  # the paper's defaults
    weights = {k: v for k, v in converted.state_dict().items() if not k.startswith("head_conv.")}
    model.load_state_dict(weights, strict=True)
    return model.eval()


def test_deeplabv3_paper_defaults_match_torchvision_edited_to_the_paper() -> None:
    reference = paper_torchvision_deeplabv3()
    model = paper_atrous_deeplabv3(reference)
    rates = [block.conv2.dilation[0] for block in model.backbone.body.layer4]
    assert rates == [4, 8, 16]
    x = torch.randn(1, 3, 96, 136)  # a multiple of the output stride: no padding question
    with torch.no_grad():
        expected, got = reference(x)["out"], model(x)
    assert expected.std() > 0.1, "the test needs outputs that vary"
    assert (got - expected).abs().max() <= 1e-4 * (1 + expected.abs().max())


@pytest.mark.parametrize("difference", ["multi_grid", "head_conv", "odd_size"])
def test_deeplabv3_each_difference_from_torchvision_shows(difference: str) -> None:
    """multi_grid: torchvision's layer4 runs at rate 2 then 4, 4 (no multi-grid); head_conv:
    torchvision's 3x3 conv-BN-ReLU before the classifier; odd_size: atrous zero-pads to a
    multiple of the output stride where torchvision's strided layers round odd sizes up."""
    edited = paper_torchvision_deeplabv3()
    model = paper_atrous_deeplabv3(edited)
    reference = paper_torchvision_deeplabv3(head_identity=difference != "head_conv",
                                            multi_grid=difference != "multi_grid")
    size = (97, 131) if difference == "odd_size" else (96, 136)
    x = torch.randn(1, 3, *size)
    with torch.no_grad():
        expected, got = reference(x)["out"], model(x)
    assert got.shape == expected.shape
    assert (got - expected).abs().max() > 1e-2 * (1 + expected.abs().max())
