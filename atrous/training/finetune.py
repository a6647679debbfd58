"""Fine-tuning controls, as the papers and the peers use them: the backbone frozen (its
parameters not trained, its batch norm in eval mode: smp's freeze_encoder, mmsegmentation's
frozen_stages and norm_eval), batch-norm statistics frozen everywhere (DeepLab v3's second
stage at output stride 8, Sec. 4.1), and per-part learning-rate multipliers
(mmsegmentation's paramwise_cfg lr_mult, e.g. 10x on a new head)."""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch import nn

BACKBONE_NAMES = ("backbone", "encoder")  # the submodule that holds a model's feature extractor
PARTS = ("backbone", "head")  # lr_mult keys besides parameter-name prefixes


def in_backbone(name: str) -> bool:
    """Whether parameter (or module) `name` belongs to the model's feature extractor: a
    `backbone` or `encoder` submodule anywhere in its path (Attention-to-Scale's is
    base.backbone; U-Net's and SegNet's is encoder)."""
    return any(part in BACKBONE_NAMES for part in name.split("."))


def freeze_backbone(model: nn.Module) -> int:
    """requires_grad off for the backbone's parameters; returns how many were frozen."""
    frozen = 0
    for name, parameter in model.named_parameters():
        if in_backbone(name):
            parameter.requires_grad_(False)
            frozen += parameter.numel()
    if not frozen:
        raise ValueError("the model has no backbone or encoder submodule to freeze")
    return frozen


def frozen_batch_norms(model: nn.Module, *, backbone_only: bool) -> list[nn.Module]:
    """The batch norms to keep in eval mode while training (all of them, or the backbone's)."""
    return [module for name, module in model.named_modules()
            if isinstance(module, nn.modules.batchnorm._BatchNorm) and (not backbone_only or in_backbone(name))]


def multiplier(name: str, lr_mult: dict[str, float]) -> float:
    """A parameter's learning-rate multiplier: the longest parameter-name prefix given wins,
    then 'backbone' or 'head' (everything outside the backbone), then 1."""
    prefixes = [key for key in lr_mult if key not in PARTS and (name == key or name.startswith(key + "."))]
    if prefixes:
        return float(lr_mult[max(prefixes, key=len)])
    part = "backbone" if in_backbone(name) else "head"
    return float(lr_mult.get(part, 1.0))


def parameter_groups(model: nn.Module, lr_mult: dict[str, float]) -> list[dict]:
    """The trainable parameters grouped by multiplier, each group with its "lr_mult"."""
    groups: dict[float, list[torch.nn.Parameter]] = {}
    for name, parameter in model.named_parameters():
        if parameter.requires_grad:
            groups.setdefault(multiplier(name, lr_mult), []).append(parameter)
    return [{"params": params, "lr_mult": mult} for mult, params in sorted(groups.items())]


def unknown_prefixes(model: nn.Module, lr_mult: dict[str, float]) -> Iterator[str]:
    """The lr_mult keys that name no part and no parameter prefix of `model`."""
    names = [name for name, _ in model.named_parameters()]
    for key in lr_mult:
        if key not in PARTS and not any(n == key or n.startswith(key + ".") for n in names):
            yield key
