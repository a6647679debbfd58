"""The backbone interface, and reading weights files into a backbone."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn


class Backbone(nn.Module):
    """A feature extractor returning a list of feature maps, shallow to deep.

    Subclasses set `channels[i]` and `reductions[i]` (the stride of feature i w.r.t. the
    input) and implement `forward(x) -> list[Tensor]`.
    """

    channels: list[int]
    reductions: list[int]

    @property
    def output_stride(self) -> int:
        return self.reductions[-1]

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:  # pragma: no cover - interface
        raise NotImplementedError


def adapt_input_conv(weight: torch.Tensor, in_channels: int) -> torch.Tensor:
    """A first convolution's weights (O, C, k, k), trained on C bands (RGB), for `in_channels`
    bands, as timm and smp adapt them: one band takes the sum of the C filters; otherwise the
    filters repeat over the bands (band i gets filter i mod C) and are scaled by C / in_channels,
    so that an image made of the C bands repeated gives the C-band network's activations."""
    if in_channels == weight.shape[1]:
        return weight
    if in_channels == 1:
        return weight.sum(dim=1, keepdim=True)
    repeats = -(-in_channels // weight.shape[1])  # ceil
    return weight.repeat(1, repeats, 1, 1)[:, :in_channels] * (weight.shape[1] / in_channels)


def adapt_first_conv(state: dict[str, torch.Tensor], own: dict[str, torch.Tensor]) -> str | None:
    """Adapt, in `state`, the model's first convolution (the first 4-D weight of `own`) when its
    weights were trained on another number of bands; returns its name when it was adapted."""
    first = next((key for key, value in own.items() if value.ndim == 4), None)
    tensor, target = state.get(first), own.get(first)
    if tensor is None or target is None or tensor.ndim != 4 or tensor.shape == target.shape:
        return None
    if tensor.shape[0] != target.shape[0] or tensor.shape[2:] != target.shape[2:]:
        return None  # another layer altogether: left to the shape check
    state[first] = adapt_input_conv(tensor, target.shape[1])
    return first


def load_weights_file(module: nn.Module, path: str, *, strict_prefixes: Sequence[str] = ()) -> None:
    """Load a local .safetensors / .pth state dict into `module`, ignoring keys that belong
    to a classifier head the backbone does not have; fail on anything else that is off."""
    import os

    if not os.path.isfile(path):
        raise FileNotFoundError(f"pretrained_backbone file not found: {path}")
    if path.endswith(".safetensors"):
        from safetensors.torch import load_file

        state = load_file(path)
    else:
        state = torch.load(path, map_location="cpu", weights_only=True)
        if isinstance(state, dict) and "state_dict" in state:
            state = state["state_dict"]
    own = module.state_dict()
    usable = {k: v for k, v in state.items() if k in own}
    adapt_first_conv(usable, own)  # RGB weights for a model of other bands
    if not usable:
        raise ValueError(f"pretrained_backbone {path}: no tensor names match this backbone")
    bad = [k for k, v in usable.items() if v.shape != own[k].shape]
    if bad:
        raise ValueError(
            f"pretrained_backbone {path}: shape mismatch for {bad[0]} "
            f"({tuple(usable[bad[0]].shape)} vs {tuple(own[bad[0]].shape)})"
        )
    missing = [k for k in own if k not in usable and not k.endswith("num_batches_tracked")]
    # keys of a head the backbone lacks (fc, classifier) are fine; extra keys inside the
    # backbone's own modules mean another architecture (e.g. ResNet-34 weights for ResNet-18)
    own_modules = {k.split(".")[0] for k in own}
    foreign = [k for k in state if k not in own and k.split(".")[0] in own_modules]
    if foreign:
        raise ValueError(f"pretrained_backbone {path}: tensor {foreign[0]} has no place in this backbone "
                         "(weights of another architecture?)")
    if missing:
        raise ValueError(f"pretrained_backbone {path}: missing {len(missing)} tensors, e.g. {missing[0]}")
    module.load_state_dict(usable, strict=False)
