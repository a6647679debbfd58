"""Batch norm folded into convolutions: the same fp32 outputs on every registered model, the
user's model untouched, and no fold where the data flow forbids it."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import atrous
from atrous.inference.fold import find_conv_bn_pairs, fold_batch_norm
from tests.test_models import SMALL
from tests.test_torchvision_compat import randomise_batch_norm

EXAMPLE = torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(0))


def batch_norms(model: nn.Module) -> int:
    return sum(isinstance(m, nn.BatchNorm2d) for m in model.modules())


@pytest.mark.parametrize("name", atrous.list_models())
def test_folded_model_gives_the_same_fp32_outputs(name: str) -> None:
    torch.manual_seed(0)
    model = atrous.create_model(name, 5, **SMALL.get(name, {}))
    randomise_batch_norm(model)
    model.train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    folded = fold_batch_norm(model, EXAMPLE)
    assert model.training, "the user's model keeps its mode"
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items()), "and its weights"
    x = torch.randn(1, 3, 41, 57)
    model.eval()
    with torch.no_grad():
        expected, got = model(x), folded(x)
    assert (expected - got).abs().max() <= 1e-4
    if batch_norms(model):  # only auxiliary heads, unused in eval mode, may keep theirs
        assert batch_norms(folded) <= sum(batch_norms(m) for n, m in model.named_children() if "aux" in n)


def test_deeplab_v3plus_keeps_no_batch_norm() -> None:
    model = atrous.create_model("deeplab_v3plus", 3, backbone="resnet18")
    assert batch_norms(model) > 20 and batch_norms(fold_batch_norm(model, EXAMPLE)) == 0


class ReadTwice(nn.Module):
    """Pre-activation style: the convolution's output feeds the batch norm and the sum."""

    def __init__(self) -> None:
        super().__init__()
        self.conv, self.bn = nn.Conv2d(3, 3, 3, padding=1), nn.BatchNorm2d(3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)
        return self.bn(y) + y


class SharedConv(nn.Module):
    """One convolution called twice, once before the batch norm and once without."""

    def __init__(self) -> None:
        super().__init__()
        self.conv, self.bn = nn.Conv2d(3, 3, 1), nn.BatchNorm2d(3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn(self.conv(x)) + self.conv(x)


class AfterActivation(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv, self.bn = nn.Conv2d(3, 3, 1), nn.BatchNorm2d(3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn(torch.relu(self.conv(x)))


@pytest.mark.parametrize("model_class", [ReadTwice, SharedConv, AfterActivation])
def test_no_fold_where_the_convolution_output_is_needed_elsewhere(model_class) -> None:
    model = model_class()
    randomise_batch_norm(model)
    model.eval()
    assert find_conv_bn_pairs(model, EXAMPLE) == {}
    folded = fold_batch_norm(model, EXAMPLE)
    with torch.no_grad():
        assert torch.equal(folded(EXAMPLE), model(EXAMPLE))


def test_timm_batch_norm_with_activation_keeps_its_activation() -> None:
    from timm.layers import BatchNormAct2d

    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1, bias=False), BatchNormAct2d(4, act_layer=nn.Hardswish))
    randomise_batch_norm(model)
    model.eval()
    folded = fold_batch_norm(model, EXAMPLE)
    assert batch_norms(folded) == 0 and isinstance(folded[1][1], nn.Hardswish)
    with torch.no_grad():
        assert (folded(EXAMPLE) - model(EXAMPLE)).abs().max() <= 1e-5
