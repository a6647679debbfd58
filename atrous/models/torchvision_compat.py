"""torchvision's segmentation models as atrous models with the same weights and outputs.

    tv = torchvision.models.segmentation.deeplabv3_resnet50(weights=...)
    model = atrous.from_torchvision("deeplabv3_resnet50", tv.state_dict())
    # model(x) == tv(x)["out"] in eval mode (to float32 rounding), at any input size

Supported: fcn_resnet50, fcn_resnet101, deeplabv3_resnet50, deeplabv3_resnet101,
deeplabv3_mobilenet_v3_large, lraspp_mobilenet_v3_large. What torchvision does differently
from the papers is expressed by our models' options:

- Every converted model has `pad_input=False`: torchvision runs the network on the image as
  it is (a stride-2 layer rounds odd sizes up) where atrous models zero-pad to a multiple of
  their output stride, which changes the outputs at sizes that are not such a multiple.
- FCN: `fcn32s` with `backbone="resnetXX"` at `output_stride=8` (ResNet dilated in layer3
  and layer4, as torchvision's `replace_stride_with_dilation=[False, True, True]`), whose
  head is torchvision's FCNHead (3x3 conv to C/4, BN, ReLU, dropout 0.1, 1x1).
- DeepLabV3: `deeplab_v3` at `output_stride=8` (ASPP rates 12/24/36), `multi_grid=None`
  (torchvision has no multi-grid), `aspp_dropout=0.5`, `head_conv=True` (the extra 3x3
  256-channel conv-BN-ReLU before the classifier).
- MobileNetV3-Large (both MobileNet models): timm's `mobilenetv3_large_100` (the same
  architecture, its tensors in the same order) at output stride 16 with torchvision's
  choices as backbone options: batch norm eps 0.001, every block of the dilated last stage
  at rate 2 (`dilate_stage_entry`), and the stride-8 features taken after the first block
  of that stage (`feature_modules`, torchvision's `features[4]`). DeepLabV3 keeps ASPP rates
  12/24/36 at output stride 16 (`rates`); LR-ASPP is atrous' `lraspp`.
- The auxiliary classifier (torchvision's `aux_classifier`, present in its pretrained
  weights) is kept as our `aux_head` (loss weight 0.5, as in torchvision's reference
  training) when the state dict has it, and omitted otherwise.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import torch

from atrous.models.base import SegmentationModel
from atrous.models.registry import create_model

SUPPORTED = (
    "fcn_resnet50",
    "fcn_resnet101",
    "deeplabv3_resnet50",
    "deeplabv3_resnet101",
    "deeplabv3_mobilenet_v3_large",
    "lraspp_mobilenet_v3_large",
)
# torchvision's MobileNetV3-Large as its segmentation models use it, on timm's implementation
MOBILENET_V3_LARGE = {
    "backbone": "mobilenetv3_large_100",
    "output_stride": 16,
    "backbone_options": {
        "feature_modules": ["blocks.2.0", "blocks.6"],  # torchvision's features[4] and features[16]
        "dilate_stage_entry": True,
        "timm_kwargs": {"bn_eps": 0.001},
    },
}


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


def _rename_by_order(source: list[str], target: list[str], state_dict: Mapping[str, torch.Tensor],
                     own: Mapping[str, torch.Tensor]) -> dict[str, str]:
    """{source key: target key} pairing two modules that register the same tensors in the same
    order under other names (torchvision's and timm's MobileNetV3); every pair must agree in
    shape and in kind (weight, bias, running_mean, ...)."""
    if len(source) != len(target):
        raise ValueError(f"backbone has {len(source)} tensors where {len(target)} are expected")
    for src, dst in zip(source, target, strict=True):
        if src.rsplit(".", 1)[-1] != dst.rsplit(".", 1)[-1] or state_dict[src].shape != own[dst].shape:
            raise ValueError(f"backbone tensor {src} {tuple(state_dict[src].shape)} does not fit {dst}")
    return dict(zip(source, target, strict=True))


def published_state_dict(name: str, weights: str) -> Mapping[str, torch.Tensor]:
    """torchvision's published weights `weights` of model `name`, through its weights API."""
    from torchvision.models import get_model_weights

    enum = get_model_weights(name)
    try:
        entry = enum.DEFAULT if weights == "DEFAULT" else enum[weights]
    except KeyError as err:
        known = ", ".join(["DEFAULT", *(w.name for w in enum)])
        raise ValueError(f"{name} has no weights '{weights}'; choose one of: {known}") from err
    return entry.get_state_dict(progress=False)


def _build(name: str, state_dict: Mapping[str, torch.Tensor], num_classes: int, aux: bool) -> SegmentationModel:
    family, backbone = name.split("_", 1)
    if family == "fcn":
        return create_model("fcn32s", num_classes, backbone=backbone, output_stride=8, aux_head=aux,
                            pad_input=False)
    if family == "lraspp":
        inter = state_dict["classifier.cbr.0.weight"].shape[0]
        return create_model("lraspp", num_classes, inter_channels=inter, pad_input=False, **MOBILENET_V3_LARGE)
    if backbone == "mobilenet_v3_large":
        return create_model("deeplab_v3", num_classes, multi_grid=None, aspp_dropout=0.5, head_conv=True,
                            aux_head=aux, rates=(12, 24, 36), pad_input=False, **MOBILENET_V3_LARGE)
    return create_model("deeplab_v3", num_classes, backbone=backbone, output_stride=8, multi_grid=None,
                        aspp_dropout=0.5, head_conv=True, aux_head=aux, pad_input=False)


def _renames(name: str, state_dict: Mapping[str, torch.Tensor], model: SegmentationModel) -> dict[str, str]:
    """{torchvision key: atrous key} for every tensor of `state_dict`."""
    keys = list(state_dict)
    if "mobilenet" in name:  # the backbone by order; the heads by name
        own = model.state_dict()
        ours = [key for key in own if key.startswith("backbone.")]
        theirs = [key for key in keys if key.startswith("backbone.")]
        renames = _rename_by_order(theirs, ours, state_dict, own)
        rest = [key for key in keys if not key.startswith("backbone.")]
        if name.startswith("lraspp"):
            return renames | {key: "head." + key[len("classifier.") :] for key in rest}
        return renames | {key: _rename_deeplabv3(key) for key in rest}
    rename: Callable[[str], str] = _rename_fcn if name.startswith("fcn") else _rename_deeplabv3
    return {key: rename(key) for key in keys}


def from_torchvision(name: str, state_dict: Mapping[str, torch.Tensor] | None = None, *,
                     weights: str | None = None) -> SegmentationModel:
    """The atrous model equivalent to torchvision's segmentation model `name`, carrying the
    weights of `state_dict` (the torchvision model's `state_dict()`), or of torchvision's
    published `weights` ("DEFAULT", "COCO_WITH_VOC_LABELS_V1", ...), fetched through
    torchvision's weights API: downloaded once into $TORCH_HOME/hub/checkpoints, read from
    there afterwards (no network needed when the file is there)."""
    if name not in SUPPORTED:
        raise ValueError(f"from_torchvision supports {', '.join(SUPPORTED)}; got '{name}'")
    if (state_dict is None) == (weights is None):
        raise ValueError("give from_torchvision a state_dict or weights=..., not both or neither")
    if weights is not None:
        state_dict = published_state_dict(name, weights)
    classifier_key = "classifier.high_classifier.weight" if name.startswith("lraspp") else "classifier.4.weight"
    if classifier_key not in state_dict:
        raise ValueError(f"state dict for {name} has no '{classifier_key}'; is it torchvision's?")
    num_classes = state_dict[classifier_key].shape[0]
    aux = any(key.startswith("aux_classifier.") for key in state_dict)
    model = _build(name, state_dict, num_classes, aux)
    renames = _renames(name, state_dict, model)
    model.load_state_dict({renames[key]: value for key, value in state_dict.items()}, strict=True)
    return model
