"""Fitting CRF parameters on frozen network outputs, and rebuilding CRFs from configs."""

from __future__ import annotations

import itertools
from collections.abc import Iterable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from atrous.crf.conv import ConvCRF
from atrous.crf.dense import DenseCRF

__all__ = ["crf_from_config", "fit_crf"]

_KINDS = {"dense": DenseCRF, "conv": ConvCRF}


def crf_from_config(config: dict[str, Any]) -> nn.Module:
    """Build a CRF from ``crf.config()``'s dict: {"kind": "dense" | "conv", **parameters}."""
    config = dict(config)
    kind = config.pop("kind", None)
    if kind not in _KINDS:
        raise ValueError(f"CRF config 'kind' must be one of {sorted(_KINDS)}, got {kind!r}")
    return _KINDS[kind](**config)


def fit_crf(
    crf: nn.Module,
    batches: Iterable[tuple[torch.Tensor, torch.Tensor, torch.Tensor]],
    iters: int,
    lr: float = 0.01,
    *,
    ignore_index: int = 255,
) -> list[float]:
    """Fit ``crf``'s trainable parameters by Adam on the cross-entropy of its output.

    batches: (logits (N, C, H, W), image (N, 3, H, W) in [0, 255], target (N, H, W) int64)
        from a frozen network; cycled through until ``iters`` steps are done (a list is
        fine; a one-shot iterator is cached on first pass).
    Returns the training loss of every step. Engine-independent: no data loading, no
    checkpointing; the fitted values live in ``crf.state_dict()``.
    """
    params = [p for p in crf.parameters() if p.requires_grad]
    if not params:
        raise ValueError("the CRF has no trainable parameters")
    optimizer = torch.optim.Adam(params, lr=lr)
    crf.train()
    losses: list[float] = []
    cache: list = []
    source = itertools.chain(_remember(batches, cache), itertools.cycle(cache))
    for _, (logits, image, target) in zip(range(iters), source, strict=False):
        log_q = crf(logits.detach(), image)
        loss = F.nll_loss(log_q, target, ignore_index=ignore_index)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        _keep_valid(crf)
        losses.append(float(loss.detach()))
    crf.eval()
    return losses


def _remember(batches: Iterable, cache: list):
    for batch in batches:
        cache.append(batch)
        yield batch
    if not cache:
        raise ValueError("fit_crf needs at least one batch")


def _keep_valid(crf: nn.Module) -> None:
    """Keep kernel widths positive after a step (they divide the features)."""
    with torch.no_grad():
        for name in ("pos_xy_std", "bi_xy_std", "bi_rgb_std"):
            value = getattr(crf, name, None)
            if isinstance(value, nn.Parameter):
                value.clamp_(min=1e-2)
