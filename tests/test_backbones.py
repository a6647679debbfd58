"""Backbones: timm wrapper (output stride, multi-grid, local weight files) and VGG16."""

from __future__ import annotations

import pytest
import timm
import torch
from torch import nn

import atrous
from atrous.backbones import VGG16, TimmBackbone


def _dilations(stage: nn.Module) -> list[int]:
    return [m.dilation[0] for m in stage.modules() if isinstance(m, nn.Conv2d) and m.kernel_size[0] == 3]


@pytest.mark.parametrize(("output_stride", "rates"), [(16, [2, 4, 8]), (8, [4, 8, 16]), (32, [1, 2, 4])])
def test_multi_grid_rates_follow_deeplab_v3(output_stride, rates):
    with torch.device("meta"):
        backbone = TimmBackbone("resnet50", output_stride=output_stride, multi_grid=(1, 2, 4))
    assert _dilations(backbone.body.layer4) == rates
    assert backbone.reductions[-1] == output_stride


def test_output_stride_keeps_feature_sizes():
    backbone = TimmBackbone("resnet18", output_stride=8)
    features = backbone(torch.randn(1, 3, 64, 64))
    assert [f.shape[-1] for f in features] == [64 // r for r in backbone.reductions] == [32, 16, 8, 8, 8]


def test_local_timm_weights_file_loads(tmp_path):
    reference = timm.create_model("resnet18", pretrained=False)
    path = tmp_path / "resnet18.pth"
    torch.save(reference.state_dict(), path)  # a timm/torchvision-named file, fc included
    model = atrous.create_model("deeplab_v3plus", 3, backbone="resnet18", pretrained_backbone=str(path))
    loaded = model.backbone.body.state_dict()
    for key, value in loaded.items():
        assert torch.equal(value, reference.state_dict()[key]), key


def test_wrong_weights_file_is_refused(tmp_path):
    path = tmp_path / "other.pth"
    torch.save(timm.create_model("resnet34", pretrained=False).state_dict(), path)
    with pytest.raises(ValueError, match="another architecture"):
        atrous.create_model("deeplab_v3", 3, backbone="resnet18", pretrained_backbone=str(path))
    with pytest.raises(FileNotFoundError, match="neither a file nor"):
        atrous.create_model("deeplab_v3", 3, backbone="resnet18", pretrained_backbone=str(tmp_path / "none.pth"))


def test_vgg16_output_strides_and_dilation():
    for output_stride, reductions in ((32, [2, 4, 8, 16, 32]), (16, [2, 4, 8, 16, 16]), (8, [2, 4, 8, 8, 8])):
        vgg = VGG16(output_stride=output_stride)
        assert vgg.reductions == reductions
        sizes = [f.shape[-1] for f in vgg(torch.randn(1, 3, 64, 64))]
        assert sizes == [64 // r for r in reductions]
    conv5 = [m for m in VGG16(output_stride=8).features[24:] if isinstance(m, nn.Conv2d)]
    assert [c.dilation[0] for c in conv5] == [2, 2, 2]


def test_unknown_option_and_bad_stride_are_clear():
    with pytest.raises(ValueError, match="no option 'nope'"):
        atrous.create_model("deeplab_v3plus", 3, backbone="resnet18", nope=1)
    with pytest.raises(ValueError, match="output_stride must be 8, 16 or 32"):
        atrous.create_model("deeplab_v3", 3, backbone="resnet18", output_stride=4)
