"""Model registry: builder functions registered by name, as in timm."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

import torch

from atrous.backbones.timm_backbone import TimmBackbone
from atrous.layers import INIT_SCHEMES, he_init_
from atrous.models.base import CONTRACT_ARGUMENTS, SegmentationModel
from atrous.registry import Registry

# a SegmentationModel subclass, or a function returning one
Builder = Callable[..., SegmentationModel]

_BUILDERS: Registry[Builder] = Registry("model")
_SUMMARIES: dict[str, str] = {}


def register_model(name: str, summary: str) -> Callable[[Builder], Builder]:
    """Register a model class (or builder function) under `name` with a one-line summary.

    It is called as `builder(num_classes, *, in_channels, backbone, output_stride,
    pretrained_backbone, **options)`, None meaning the paper's default; its other
    keyword-only parameters are the model's options.
    """

    def decorate(builder: Builder) -> Builder:
        _BUILDERS.add(name, builder)
        _SUMMARIES[name] = summary
        if isinstance(builder, type):
            builder.registered_name = name  # what its models record in `config` (SegmentationModel)
        return builder

    return decorate


def list_models() -> list[str]:
    """Every registered model name, sorted."""
    return sorted(_BUILDERS)


def model_summaries() -> dict[str, str]:
    return dict(sorted(_SUMMARIES.items()))


def model_family(name: str) -> str:
    """The family file of model `name` ("atrous.models.fcn" for fcn32s, fcn16s and fcn8s)."""
    return _get_builder(name).__module__


def describe_model(name: str) -> str:
    """What `atrous models NAME` prints: the summary, the model's docstring (the paper, its
    deviations and an `Args:` block of its options) and each option with its default."""
    builder = _get_builder(name)
    lines = [f"{name}: {_SUMMARIES[name]}", ""]
    doc = inspect.getdoc(builder)
    if doc:
        lines += [doc, ""]
    lines.append("create_model(name, num_classes, *, in_channels=3, backbone=None, output_stride=None, "
                 "pretrained_backbone=None, **options)")
    options = {**model_options(name), "init": "he"}
    lines.append("options (--model-opt KEY=VALUE): " + ", ".join(f"{k}={v!r}" for k, v in options.items()))
    return "\n".join(lines)



def model_cost(name: str, num_classes: int = 21, input_size: tuple[int, int] = (512, 512), *,
               in_channels: int = 3, **options: Any) -> tuple[int, int]:
    """(parameters, FLOPs) of model `name` with its defaults, FLOPs of one forward pass on one
    image of `input_size` (see `count_cost`). Built on the meta device, which counts shapes
    without memory or arithmetic; on the CPU for a model that cannot run there."""
    def cost_on(device: str) -> tuple[int, int]:
        with torch.device(device):
            model = create_model(name, num_classes, in_channels=in_channels, **options)
        return count_cost(model, input_size, in_channels)

    try:
        return cost_on("meta")
    except (NotImplementedError, RuntimeError):  # a forward that reads values
        return cost_on("cpu")


def count_cost(model: torch.nn.Module, input_size: tuple[int, int], in_channels: int = 3) -> tuple[int, int]:
    """(parameters, FLOPs) of `model` in eval mode on one image (1, in_channels, H, W), FLOPs
    as torch.utils.flop_counter.FlopCounterMode counts them: 2 per multiply-add of the
    convolutions and matrix products; biases, norms, activations, pooling and resizing are not
    counted. fvcore and mmengine (behind mmsegmentation's get_flops) count multiply-adds, half
    this number, under the name FLOPs, and add norms and resizing."""
    from torch.utils.flop_counter import FlopCounterMode

    first = next(model.parameters(), None)
    image = torch.zeros(1, in_channels, *input_size, device=first.device if first is not None else "cpu")
    training = model.training
    try:
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            model.eval()(image)
    finally:
        model.train(training)
    return sum(p.numel() for p in model.parameters()), int(counter.get_total_flops())


def model_options(name: str) -> dict[str, Any]:
    """The keyword options (beyond the contract's) that model `name` accepts, with defaults."""
    builder = _get_builder(name)
    params = inspect.signature(builder).parameters
    return {
        key: p.default
        for key, p in params.items()
        if p.kind is p.KEYWORD_ONLY and key not in CONTRACT_ARGUMENTS
    }


def _get_builder(name: str) -> Builder:
    return _BUILDERS.get(name)


def options_for_weights(name: str, options: dict[str, Any], keys: set[str]) -> dict[str, Any]:
    """The options with which a checkpoint of model `name` holding tensors `keys` was saved:
    a model whose architecture changed may recognise an older checkpoint by its tensors
    (a classmethod `options_for_weights(options, keys)`); the options unchanged otherwise."""
    upgrade = getattr(_get_builder(name), "options_for_weights", None)
    return upgrade(dict(options), keys) if upgrade is not None else dict(options)


def create_model(
    name: str,
    num_classes: int,
    *,
    in_channels: int = 3,
    backbone: str | None = None,
    output_stride: int | None = None,
    pretrained_backbone: str | None = None,
    **options: Any,
) -> SegmentationModel:
    """Build model `name`. None means the paper's default for backbone and output stride.

    `pretrained_backbone` is None, a local weights file, or a named source ("imagenet")
    fetched only when asked for. Unknown options raise a ValueError that lists the known.
    `init="he"` (every model's option) initialises the layers atrous builds as smp does
    (atrous.layers.init; timm encoders and loaded weights keep theirs); "none" keeps what
    the constructors did (PyTorch's per-layer defaults).
    """
    builder = _get_builder(name)
    init = options.pop("init", "he")
    if init not in INIT_SCHEMES:
        raise ValueError(f"init must be one of {INIT_SCHEMES}, got '{init}'")
    known = model_options(name)
    unknown = sorted(set(options) - set(known))
    if unknown:
        listing = ", ".join(known) or "none"
        raise ValueError(f"model '{name}' has no option '{unknown[0]}' (its options: {listing})")
    model = builder(
        num_classes,
        in_channels=in_channels,
        backbone=backbone,
        output_stride=output_stride,
        pretrained_backbone=pretrained_backbone,
        **options,
    )
    if init == "he":
        he_init_(model, num_classes, skip=(TimmBackbone,))
    if init != "he":
        options["init"] = init
    model.config = {
        "name": name,
        "num_classes": num_classes,
        "in_channels": in_channels,
        "backbone": backbone,
        "output_stride": output_stride,
        "options": dict(options),
    }
    return model
