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
