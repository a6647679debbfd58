"""Fitting CRF parameters on frozen network outputs, and rebuilding CRFs from configs."""

from __future__ import annotations

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
        from a frozen network; cycled through until ``iters`` steps are done. A list, or any
        re-iterable whose ``__iter__`` starts a new pass (e.g. one drawing fresh crops), is
        iterated again each pass and nothing is kept; a one-shot iterator is cached on its
        first pass.
    Returns the training loss of every step. Engine-independent: no data loading, no
    checkpointing; the fitted values live in ``crf.state_dict()``.
    """
    params = [p for p in crf.parameters() if p.requires_grad]
    if not params:
        raise ValueError("the CRF has no trainable parameters")
    optimizer = torch.optim.Adam(params, lr=lr)
    crf.train()
    losses: list[float] = []
    for _, (logits, image, target) in zip(range(iters), _passes(batches), strict=False):
        log_q = crf(logits.detach(), image)
        loss = F.nll_loss(log_q, target, ignore_index=ignore_index)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        _keep_valid(crf)
        losses.append(float(loss.detach()))
    crf.eval()
    return losses


def _passes(batches: Iterable):
    """Endless passes over ``batches``; a one-shot iterator is cached as it is consumed."""
    cache: list | None = [] if iter(batches) is batches else None
    while True:
        empty = True
        for batch in batches:
            empty = False
            if cache is not None:
                cache.append(batch)
            yield batch
        if empty:
            raise ValueError("fit_crf needs at least one batch")
        if cache is not None:
            batches, cache = cache, None


def _keep_valid(crf: nn.Module) -> None:
    """Keep kernel widths positive after a step (they divide the features)."""
    with torch.no_grad():
        for name in ("pos_xy_std", "bi_xy_std", "bi_rgb_std"):
            value = getattr(crf, name, None)
            if isinstance(value, nn.Parameter):
                value.clamp_(min=1e-2)
