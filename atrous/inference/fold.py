"""Batch norm folded into the convolution before it, for inference.

In eval mode a BatchNorm2d is a per-channel affine map, y = (x - mean) / sqrt(var + eps) *
gamma + beta; when x is a convolution's output used by nothing else, the map folds into the
convolution's weights and bias (torch.nn.utils.fusion.fuse_conv_bn_weights) and the batch
norm becomes the identity: one memory pass less per pair.

Which batch norm follows which convolution is read from the data flow of one forward pass
on an example input, not from module names: a forward hook records each convolution's
output tensor, a pre-hook each batch norm's input, and a TorchFunctionMode counts every
operation that consumes each tensor (shape queries return no tensor and do not count). A
pair folds when, at every call, the batch norm's input is that convolution's output and
nothing else reads it. The folded copy is then checked against the original on the example.
"""

from __future__ import annotations

import copy
import warnings
from collections import Counter, defaultdict
from typing import Any

import torch
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_weights
from torch.overrides import TorchFunctionMode
from torch.utils._pytree import tree_leaves

from atrous.runtime.device import eval_mode

TOLERANCE = 1e-4  # the largest fp32 difference accepted, relative to the output's range


class _CountReads(TorchFunctionMode):
    """Counts, per tensor, the operations that read it and produce a tensor."""

    def __init__(self) -> None:
        super().__init__()
        self.reads: Counter[int] = Counter()
        self.alive: list[torch.Tensor] = []  # keeps ids unique while the pass runs

    def __torch_function__(self, func, types, args=(), kwargs=None):  # noqa: ANN001
        result = func(*args, **(kwargs or {}))
        if any(isinstance(leaf, torch.Tensor) for leaf in tree_leaves(result)):
            for leaf in tree_leaves((args, kwargs)):
                if isinstance(leaf, torch.Tensor):
                    self.reads[id(leaf)] += 1
                    self.alive.append(leaf)
        return result


def _is_plain_conv(module: nn.Module) -> bool:
    return isinstance(module, nn.Conv2d) and type(module).forward is nn.Conv2d.forward


def _bn_replacement(module: nn.Module) -> nn.Module | None:
    """What a folded batch norm becomes: the identity, or the dropout and activation of
    timm's BatchNormAct2d; None for a batch norm that cannot fold (batch statistics in eval,
    an unknown forward)."""
    if not isinstance(module, nn.BatchNorm2d) or module.running_mean is None:
        return None
    if type(module).forward is nn.BatchNorm2d.forward:
        return nn.Identity()
    try:
        from timm.layers import BatchNormAct2d
    except ImportError:  # pragma: no cover - timm is a dependency
        return None
    if type(module).forward is BatchNormAct2d.forward:
        return nn.Sequential(module.drop, module.act)
    return None


def find_conv_bn_pairs(model: nn.Module, example: torch.Tensor) -> dict[str, str]:
    """{batch norm name: convolution name} for the pairs that can fold, from one forward pass
    of `model` (in eval mode) on `example`."""
    modules = dict(model.named_modules())
    conv_outputs: dict[int, str] = {}
    conv_calls: Counter[str] = Counter()
    bn_sources: defaultdict[str, list[int]] = defaultdict(list)
    handles = []
    for name, module in modules.items():
        if _is_plain_conv(module):
            def after_conv(_module: nn.Module, _inputs: Any, output: torch.Tensor, name: str = name) -> None:
                conv_outputs[id(output)] = name
                conv_calls[name] += 1
            handles.append(module.register_forward_hook(after_conv))
        elif _bn_replacement(module) is not None:
            def before_bn(_module: nn.Module, inputs: tuple[torch.Tensor, ...], name: str = name) -> None:
                bn_sources[name].append(id(inputs[0]))
            handles.append(module.register_forward_pre_hook(before_bn))
    counter = _CountReads()
    try:
        with torch.no_grad(), counter:
            model(example)
    finally:
        for handle in handles:
            handle.remove()
    pairs: dict[str, str] = {}
    for bn_name, sources in bn_sources.items():
        convs = {conv_outputs.get(source) for source in sources}
        read_once = all(counter.reads[source] == 1 for source in sources)
        if len(convs) == 1 and None not in convs and read_once:
            conv_name = convs.pop()
            if conv_calls[conv_name] == len(sources):  # the convolution feeds this batch norm only
                pairs[bn_name] = conv_name
    return pairs


def _replace(model: nn.Module, name: str, replacement: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent_name) if parent_name else model, child, replacement)


def fold_batch_norm(model: nn.Module, example: torch.Tensor) -> nn.Module:
    """A copy of `model` in eval mode with every foldable batch norm folded into its
    convolution; `model` itself is untouched. Should the folded copy not reproduce the
    original on `example` (a pattern the data-flow check missed), the copy is returned
    unfolded, with a warning."""
    folded = copy.deepcopy(model).eval()
    modules = dict(folded.named_modules())
    pairs = find_conv_bn_pairs(folded, example)
    for bn_name, conv_name in pairs.items():
        conv, bn = modules[conv_name], modules[bn_name]
        conv.weight, conv.bias = fuse_conv_bn_weights(
            conv.weight, conv.bias, bn.running_mean, bn.running_var, bn.eps, bn.weight, bn.bias
        )
        _replace(folded, bn_name, _bn_replacement(bn))
    if pairs and not _same_outputs(model, folded, example):
        warnings.warn("folding batch norm changed this model's outputs; inference runs it unfolded", stacklevel=2)
        return copy.deepcopy(model).eval()
    return folded


def _same_outputs(original: nn.Module, folded: nn.Module, example: torch.Tensor) -> bool:
    with torch.no_grad(), eval_mode(original):
        expected, got = original(example), folded(example)
    scale = 1.0 + float(expected.abs().max())
    return bool((expected - got).abs().max() <= TOLERANCE * scale)
