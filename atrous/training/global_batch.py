"""One global batch, the same on any number of ranks and accumulation steps.

`--batch-size B` is the global batch. With W ranks and `--grad-accum K`, each step's B
samples are cut into K micro-batches (consecutive rows of the global batch) and each
micro-batch into W shards of n = B / (K W) rows, rank r taking the r-th:

    global row of (micro-batch m, rank r, i) = m * B / K + r * n + i,   sample number = step * B + row

What has to see the whole micro-batch to be independent of W:
- batch-norm statistics: torch's nn.SyncBatchNorm on CUDA, `AllReduceBatchNorm` on CPU
  (gloo), where torch's does not run;
- dropout masks: `ShardedDropout` draws the mask of all B rows from the (same) RNG state on
  every rank and keeps this shard's rows: the very mask torch's dropout draws for the whole
  batch on one CPU process (tests check it bit for bit).
With K > 1 the trainer rewinds the RNG to the step's start before each micro-batch, so
dropout masks do not depend on K either; batch norm does (its statistics are those of a
micro-batch, B / K images, as everywhere).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import nn

from atrous.errors import UserError
from atrous.runtime.distributed import World, all_reduce_sum, is_active

# devices on which torch's own SyncBatchNorm synchronises (its kernels); others use ours
NATIVE_SYNC_DEVICES = ("cuda", "xpu", "hpu")


def micro_batch_size(batch_size: int, world_size: int, accum: int) -> int:
    """Rows per rank and micro-batch; a global batch that does not split evenly is an error."""
    parts = world_size * accum
    if batch_size % parts:
        raise UserError(
            f"batch_size {batch_size} does not split into {world_size} process(es) x grad_accum {accum}: "
            f"use a multiple of {parts}", argument=("batch_size", "grad_accum")
        )
    return batch_size // parts


class GlobalBatchSampler(torch.utils.data.Sampler[int]):
    """This rank's sample numbers for steps first_step..end_step-1, in the order it trains on
    them: step by step, micro-batch by micro-batch (a DataLoader with batch_size=n yields one
    micro-batch at a time)."""

    def __init__(self, first_step: int, end_step: int, batch_size: int, world: World, accum: int) -> None:
        self.first_step, self.end_step = first_step, end_step
        self.batch_size, self.accum, self.world = batch_size, accum, world
        self.rows = micro_batch_size(batch_size, world.size, accum)

    def first_row(self, micro: int) -> int:
        """Row of the global batch where this rank's part of micro-batch `micro` begins."""
        return micro * (self.batch_size // self.accum) + self.world.rank * self.rows

    def __iter__(self) -> Iterator[int]:
        for step in range(self.first_step, self.end_step):
            for micro in range(self.accum):
                start = step * self.batch_size + self.first_row(micro)
                yield from range(start, start + self.rows)

    def __len__(self) -> int:
        return max(0, self.end_step - self.first_step) * self.accum * self.rows


# --- batch norm ---------------------------------------------------------------------------
class _GlobalBatchNorm(torch.autograd.Function):
    """Training-mode batch norm of x (N, C, ...) whose statistics are those of every rank's x
    together, in the arithmetic of torch's CPU batch norm (sums accumulated in float64,
    elementwise work in float32; the backward pass of its batch_norm_backward), so that one
    rank and several agree as closely as two runs of torch's own. Two all-reduces forward
    (the sum, then the squared deviations), one backward. Returns (normalised x, mean,
    biased variance, global count); the last three are for the running averages."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, eps: float):
        dims = [0, *range(2, x.dim())]
        shape = [1, -1] + [1] * (x.dim() - 2)
        values = x.float()
        count = all_reduce_sum(torch.tensor([x.numel() // x.shape[1]], dtype=torch.float64, device=x.device))
        mean = (all_reduce_sum(values.sum(dims, dtype=torch.float64)) / count).float()  # (C,)
        centred = values - mean.view(shape)
        var_sum = all_reduce_sum(centred.square().sum(dims, dtype=torch.float64))
        invstd = torch.rsqrt(var_sum / count + eps).float()
        scale = invstd * weight.float()
        out = values * scale.view(shape) + (bias.float() - mean * scale).view(shape)
        ctx.save_for_backward(values, weight, mean, invstd)
        ctx.count = float(count)
        var = var_sum / count
        ctx.mark_non_differentiable(mean, var, count)
        return out.to(x.dtype), mean, var, count

    @staticmethod
    def backward(ctx, grad: torch.Tensor, *_statistics: torch.Tensor):
        values, weight, mean, invstd = ctx.saved_tensors
        dims = [0, *range(2, values.dim())]
        shape = [1, -1] + [1] * (values.dim() - 2)
        grad = grad.float()
        centred = values - mean.view(shape)
        local = torch.stack([grad.sum(dims, dtype=torch.float64), (centred * grad).sum(dims, dtype=torch.float64)])
        grad_bias, dot = local[0].float(), local[1]
        grad_weight = (dot * invstd).float()  # this rank's part: DDP sums the ranks'
        sum_grad, dot_all = all_reduce_sum(local.clone())  # (C,) each, over all ranks
        k = (dot_all * invstd.double() ** 2 / ctx.count).float()
        grad_x = (grad - (sum_grad / ctx.count).float().view(shape) - centred * k.view(shape))
        grad_x = grad_x * (invstd * weight.float()).view(shape)
        return grad_x.to(grad.dtype), grad_weight.to(weight.dtype), grad_bias.to(weight.dtype), None


class AllReduceBatchNorm(nn.modules.batchnorm._BatchNorm):
    """Batch norm over the global micro-batch for devices where torch's nn.SyncBatchNorm
    does not run (CPU, gloo; DistributedDataParallel refuses it there): `_GlobalBatchNorm`
    in training, with the running averages of torch's batch norm (unbiased variance over the
    global count). Carries timm's BatchNormAct2d `drop` and `act` when converted from one.
    In eval mode, or alone, it is plain batch norm."""

    def _check_input_dim(self, x: torch.Tensor) -> None:
        if x.dim() < 2:
            raise ValueError(f"expected at least 2D input (got {x.dim()}D input)")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self._forward_across_ranks(x) if self.training and is_active() else super().forward(x)
        if hasattr(self, "drop"):
            out = self.drop(out)
        if hasattr(self, "act"):
            out = self.act(out)
        return out

    def _forward_across_ranks(self, x: torch.Tensor) -> torch.Tensor:
        self._check_input_dim(x)
        factor = 0.0 if self.momentum is None else self.momentum
        if self.track_running_stats:
            self.num_batches_tracked.add_(1)
            if self.momentum is None:  # cumulative moving average
                factor = 1.0 / float(self.num_batches_tracked)
        channels = x.shape[1]
        weight = self.weight if self.affine else torch.ones(channels, device=x.device)
        bias = self.bias if self.affine else torch.zeros(channels, device=x.device)
        out, mean, var, count = _GlobalBatchNorm.apply(x, weight, bias, self.eps)
        if self.track_running_stats:
            with torch.no_grad():
                unbiased = var * (count / (count - 1).clamp(min=1))
                self.running_mean.mul_(1 - factor).add_(factor * mean.to(self.running_mean.dtype))
                self.running_var.mul_(1 - factor).add_(factor * unbiased.to(self.running_var.dtype))
        return out


def convert_sync_batchnorm(module: nn.Module, device: torch.device) -> nn.Module:
    """Every batch-norm layer of `module` synchronised over the ranks, sharing its parameters
    and buffers: torch's nn.SyncBatchNorm on CUDA (through timm's converter, which keeps its
    BatchNormAct2d's activation), AllReduceBatchNorm elsewhere. Returns the converted module."""
    if device.type in NATIVE_SYNC_DEVICES:
        from timm.layers import convert_sync_batchnorm as timm_convert

        return timm_convert(module)
    if isinstance(module, nn.modules.batchnorm._BatchNorm) and not isinstance(module, AllReduceBatchNorm):
        converted = AllReduceBatchNorm(module.num_features, module.eps, module.momentum, module.affine,
                                       module.track_running_stats)
        if module.affine:
            converted.weight, converted.bias = module.weight, module.bias
        converted.running_mean, converted.running_var = module.running_mean, module.running_var
        converted.num_batches_tracked = module.num_batches_tracked
        converted.train(module.training)
        for extra in ("drop", "act"):  # timm's BatchNormAct2d
            if isinstance(getattr(module, extra, None), nn.Module):
                converted.add_module(extra, getattr(module, extra))
        return converted
    for name, child in module.named_children():
        module.add_module(name, convert_sync_batchnorm(child, device))
    return module


# --- dropout --------------------------------------------------------------------------------
class ShardedDropout(nn.Module):
    """Dropout (`feature=False`, as nn.Dropout) or channel dropout (`feature=True`, as
    nn.Dropout2d) whose mask of a row depends on its place in the global batch alone: the mask
    of all `total` rows is drawn (as torch draws it for a whole batch) and rows
    first..first+len(x) are applied. `rows = (first, total)` is set by `global_rows`; unset,
    x is the whole batch."""

    def __init__(self, p: float, feature: bool = False) -> None:
        super().__init__()
        if not 0 <= p <= 1:
            raise ValueError(f"dropout probability must be in [0, 1], got {p}")
        self.p, self.feature = p, feature
        self.rows: tuple[int, int] | None = None

    def extra_repr(self) -> str:
        return f"p={self.p}, feature={self.feature}"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0 or x.numel() == 0:
            return x
        if self.p == 1:
            return x * torch.zeros((), dtype=x.dtype, device=x.device)
        first, total = self.rows or (0, x.shape[0])
        if first + x.shape[0] > total:
            raise RuntimeError(f"dropout rows {first}..{first + x.shape[0]} outside a batch of {total}")
        if self.feature:  # one draw per (row, channel), as torch's feature dropout
            noise = torch.empty((total, x.shape[1], *([1] * (x.dim() - 2))), dtype=x.dtype, device=x.device)
        else:  # one draw per element, in x's memory order, as torch.empty_like(x)
            layout = torch.channels_last if _is_channels_last(x) else torch.contiguous_format
            noise = torch.empty((total, *x.shape[1:]), dtype=x.dtype, device=x.device, memory_format=layout)
        noise.bernoulli_(1 - self.p).div_(1 - self.p)
        return x * noise[first: first + x.shape[0]]


def _is_channels_last(x: torch.Tensor) -> bool:
    return x.dim() == 4 and not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last)


def shard_dropout(module: nn.Module) -> nn.Module:
    """nn.Dropout and nn.Dropout2d layers of `module` replaced by ShardedDropout (they have no
    parameters: the state dict does not change). Returns the converted module."""
    if type(module) in (nn.Dropout, nn.Dropout2d):
        return ShardedDropout(module.p, feature=type(module) is nn.Dropout2d).train(module.training)
    for name, child in module.named_children():
        module.add_module(name, shard_dropout(child))
    return module


@contextlib.contextmanager
def global_rows(module: nn.Module, first: int, total: int) -> Iterator[None]:
    """Within: the batch fed to `module` is rows first.. of a global batch of `total` rows."""
    layers = [m for m in module.modules() if isinstance(m, ShardedDropout)]
    for layer in layers:
        layer.rows = (first, total)
    try:
        yield
    finally:
        for layer in layers:
            layer.rows = None
