"""torchvision's segmentation models as atrous models with the same weights and outputs.

    tv = torchvision.models.segmentation.deeplabv3_resnet50(weights=...)
    model = atrous.from_torchvision("deeplabv3_resnet50", tv.state_dict())
    # model(x) == tv(x)["out"] in eval mode (to float32 rounding)

Supported: fcn_resnet50, fcn_resnet101, deeplabv3_resnet50, deeplabv3_resnet101. What
torchvision does differently from the papers is expressed by our models' options:

- FCN: `fcn32s` with `backbone="resnetXX"` at `output_stride=8` (ResNet dilated in layer3
  and layer4, as torchvision's `replace_stride_with_dilation=[False, True, True]`), whose
  head is torchvision's FCNHead (3x3 conv to C/4, BN, ReLU, dropout 0.1, 1x1).
- DeepLabV3: `deeplab_v3` at `output_stride=8` (ASPP rates 12/24/36), `multi_grid=None`
  (torchvision has no multi-grid), `aspp_dropout=0.5`, `head_conv=True` (the extra 3x3
  256-channel conv-BN-ReLU before the classifier).
- The auxiliary classifier (torchvision's `aux_classifier` on layer3, present in its
  pretrained weights) is kept as our `aux_head` (loss weight 0.5, as in torchvision's
  reference training) when the state dict has it, and omitted otherwise.

Outputs match exactly when height and width are multiples of 8: torchvision does not pad,
our models zero-pad to their divisor (8 here) before the same bilinear upsampling.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import torch

from atrous.models.base import SegmentationModel
from atrous.models.registry import create_model

SUPPORTED = ("fcn_resnet50", "fcn_resnet101", "deeplabv3_resnet50", "deeplabv3_resnet101")


def _rename_common(key: str) -> str | None:
    """Backbone and auxiliary head: the same layout under another prefix."""
    if key.startswith("backbone."):
        return "backbone.body." + key[len("backbone.") :]
    if key.startswith("aux_classifier."):
        return "aux_head." + key[len("aux_classifier.") :]
    return None


def _rename_fcn(key: str) -> str:
    common = _rename_common(key)
    if common is not None:
        return common
    return "head." + key[len("classifier.") :]  # FCNHead: identical indices


def _rename_deeplabv3(key: str) -> str:
    """torchvision DeepLabHead = Sequential(ASPP, conv, BN, ReLU, conv) -> aspp / head_conv /
    classifier; inside ASPP, `convs` -> `branches` and the pooling branch and projection
    nest one level deeper (our ConvBNReLU)."""
    common = _rename_common(key)
    if common is not None:
        return common
    parts = key.split(".")
    if parts[1] != "0":  # classifier.{1,2} -> head_conv.{0,1}; classifier.4 -> classifier
        index = int(parts[1])
        if index == 4:
            return "classifier." + ".".join(parts[2:])
        return f"head_conv.{index - 1}." + ".".join(parts[2:])
    # classifier.0.convs.<branch>.<layer>.<tensor> or classifier.0.project.<layer>.<tensor>
    if parts[2] == "project":
        return "aspp.project.0." + ".".join(parts[3:])
    branch, layer, rest = int(parts[3]), int(parts[4]), ".".join(parts[5:])
    if branch == 4:  # pooling: (avgpool, conv, BN, ReLU) -> (avgpool, ConvBNReLU(conv, BN, ReLU))
        return f"aspp.branches.4.1.{layer - 1}.{rest}"
    return f"aspp.branches.{branch}.{layer}.{rest}"


def _build(name: str, num_classes: int, aux: bool) -> SegmentationModel:
    family, backbone = name.split("_", 1)
    if family == "fcn":
        return create_model("fcn32s", num_classes, backbone=backbone, output_stride=8, aux_head=aux)
    return create_model(
        "deeplab_v3",
        num_classes,
        backbone=backbone,
        output_stride=8,
        multi_grid=None,
        aspp_dropout=0.5,
        head_conv=True,
        aux_head=aux,
    )


def from_torchvision(name: str, state_dict: Mapping[str, torch.Tensor]) -> SegmentationModel:
    """The atrous model equivalent to torchvision's segmentation model `name`, carrying the
    weights of `state_dict` (the torchvision model's `state_dict()`)."""
    if name not in SUPPORTED:
        raise ValueError(f"from_torchvision supports {', '.join(SUPPORTED)}; got '{name}'")
    classifier_key = "classifier.4.weight"
    if classifier_key not in state_dict:
        raise ValueError(f"state dict for {name} has no '{classifier_key}'; is it torchvision's?")
    num_classes = state_dict[classifier_key].shape[0]
    aux = any(key.startswith("aux_classifier.") for key in state_dict)
    model = _build(name, num_classes, aux)
    rename: Callable[[str], str] = _rename_fcn if name.startswith("fcn") else _rename_deeplabv3
    model.load_state_dict({rename(key): value for key, value in state_dict.items()}, strict=True)
    return model
