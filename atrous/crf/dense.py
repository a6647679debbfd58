"""Fully connected CRF with Gaussian edge potentials (Krähenbühl & Koltun, NIPS 2011).

Mean-field inference exactly as in Krähenbühl's densecrf / pydensecrf:

    unary   U = -log_softmax(logits)
    Q_0     = softmax(-U)
    for each iteration:
        M_k   = n_k * K_k (n_k * Q)          # kernel k, symmetric normalisation n_k = 1/sqrt(K_k 1)
        -E    = -U + sum_k w_k * M_k          # Potts compatibility (densecrf's "-w * Q")
        Q     = softmax(-E)

K_1 is the smoothness kernel on positions (x / pos_xy_std), K_2 the appearance kernel on
positions and colours (x / bi_xy_std, rgb / bi_rgb_std); both include the pixel itself, as
densecrf's lattice does. The module returns log Q of the last iteration (log_softmax(-E)):
argmax gives the labels, exp (or softmax) gives Q.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from atrous.crf.permutohedral import ExactGaussianFilter, PermutohedralLattice, summed_filters

__all__ = ["DENSE_PRESETS", "DenseCRF", "dense_crf_preset", "pixel_features"]

# Parameter sets with a published source.
DENSE_PRESETS: dict[str, dict[str, float]] = {
    # DeepLab (Chen et al., ICLR 2015 / TPAMI 2017) released test setting, VOC 2012,
    # as in DeepLab's test prototxt and its PyTorch ports.
    "deeplab": dict(
        num_iterations=10, pos_xy_std=1, pos_w=3, bi_xy_std=67, bi_rgb_std=3, bi_w=4
    ),
    # pydensecrf README / examples/inference.py
    "pydensecrf": dict(
        num_iterations=5, pos_xy_std=3, pos_w=3, bi_xy_std=80, bi_rgb_std=13, bi_w=10
    ),
}

_COMPATIBILITIES = ("potts", "matrix")
_METHODS = ("permutohedral", "exact")


def dense_crf_preset(name: str, **overrides: Any) -> DenseCRF:
    """A DenseCRF with one of DENSE_PRESETS' parameter sets ("deeplab", "pydensecrf")."""
    if name not in DENSE_PRESETS:
        raise ValueError(f"unknown DenseCRF preset {name!r}; choose from {sorted(DENSE_PRESETS)}")
    return DenseCRF(**{**DENSE_PRESETS[name], **overrides})


def pixel_features(
    image: torch.Tensor, xy_std: torch.Tensor | float, rgb_std: torch.Tensor | float | None
) -> torch.Tensor:
    """(N, 3, H, W) image -> (N, H*W, d) features: (x, y) / xy_std [, rgb / rgb_std].

    x is the column and y the row index, as in densecrf's addPairwiseGaussian/Bilateral.
    """
    n, _, h, w = image.shape
    ys = torch.arange(h, device=image.device, dtype=image.dtype)
    xs = torch.arange(w, device=image.device, dtype=image.dtype)
    yy, xx = torch.meshgrid(ys, xs, indexing="ij")
    position = torch.stack([xx, yy], dim=-1).reshape(1, h * w, 2) / xy_std
    position = position.expand(n, h * w, 2)
    if rgb_std is None:
        return position
    colour = image.permute(0, 2, 3, 1).reshape(n, h * w, 3) / rgb_std
    return torch.cat([position, colour], dim=-1)


class DenseCRF(nn.Module):
    """Fully connected CRF; ``crf(logits, image) -> log Q`` (N, C, H, W).

    Args carry pydensecrf's meaning: ``pos_*`` is ``addPairwiseGaussian(sxy=pos_xy_std,
    compat=pos_w)``, ``bi_*`` is ``addPairwiseBilateral(sxy=bi_xy_std, srgb=bi_rgb_std,
    compat=bi_w)``, ``num_iterations`` is ``inference(n)``; image values are in [0, 255].

    compatibility: "potts" (pydensecrf's number compat) or "matrix": a learnable (C, C) label
        compatibility (penalty) matrix mu initialised to Potts (1 - I), as in CRF-as-RNN; the
        message becomes -mu @ (sum_k w_k M_k). Needs ``num_classes``.
    method: "permutohedral" (O(N), approximate) or "exact" (O(N^2) reference, small images).

    ``pos_w``, ``bi_w`` (and the matrix) are ``nn.Parameter``s, so the module can be trained
    end to end (CRF-as-RNN) and saved in a state_dict; the kernel widths are buffers (the
    lattice is not differentiable in the features).
    """

    def __init__(
        self,
        num_iterations: int = 10,
        pos_xy_std: float = 3.0,
        pos_w: float = 3.0,
        bi_xy_std: float = 80.0,
        bi_rgb_std: float = 13.0,
        bi_w: float = 10.0,
        *,
        compatibility: str = "potts",
        num_classes: int | None = None,
        method: str = "permutohedral",
    ) -> None:
        super().__init__()
        _check_options(compatibility, num_classes, (pos_xy_std, bi_xy_std, bi_rgb_std))
        if method not in _METHODS:
            raise ValueError(f"method must be one of {_METHODS}, got {method!r}")
        self.num_iterations = int(num_iterations)
        self.compatibility = compatibility
        self.num_classes = num_classes
        self.method = method
        self.register_buffer("pos_xy_std", torch.tensor(float(pos_xy_std)))
        self.register_buffer("bi_xy_std", torch.tensor(float(bi_xy_std)))
        self.register_buffer("bi_rgb_std", torch.tensor(float(bi_rgb_std)))
        self.pos_w = nn.Parameter(torch.tensor(float(pos_w)))
        self.bi_w = nn.Parameter(torch.tensor(float(bi_w)))
        if compatibility == "matrix":
            self.compat = nn.Parameter(1.0 - torch.eye(num_classes))

    def config(self) -> dict[str, Any]:
        """Constructor arguments (``crf_from_config`` rebuilds the module; weights live in
        the state_dict, the values here are the current ones)."""
        return dict(
            kind="dense",
            num_iterations=self.num_iterations,
            pos_xy_std=float(self.pos_xy_std.detach()),
            pos_w=float(self.pos_w.detach()),
            bi_xy_std=float(self.bi_xy_std.detach()),
            bi_rgb_std=float(self.bi_rgb_std.detach()),
            bi_w=float(self.bi_w.detach()),
            compatibility=self.compatibility,
            num_classes=self.num_classes,
            method=self.method,
        )

    def extra_repr(self) -> str:
        c = self.config()
        return ", ".join(f"{k}={v}" for k, v in c.items() if k != "kind")

    def _normalised_filter(self, features: torch.Tensor):
        """The Gaussian filter K of the features and n = 1/sqrt(K 1) (symmetric normalisation)."""
        filter_cls = PermutohedralLattice if self.method == "permutohedral" else ExactGaussianFilter
        gfilter = filter_cls(features.detach())
        ones = features.new_ones(features.shape[0], features.shape[1], 1)
        return gfilter, torch.rsqrt(gfilter.filter(ones) + 1e-20)

    def _smoothness_filter(self, h: int, w: int, like: torch.Tensor):
        """The position lattice and its normalisation. Positions do not depend on the image:
        one lattice serves every image of a batch, and is kept for the next call of the same
        size (the lattice and its normalisation, not the weight, which may be training)."""
        key = (h, w, float(self.pos_xy_std), self.method, like.device, like.dtype)
        cache = self.__dict__.setdefault("_smoothness_cache", {})
        if key not in cache:
            cache.clear()
            position = pixel_features(like.new_ones(1, 3, h, w), self.pos_xy_std, None)
            cache[key] = self._normalised_filter(position)
        return cache[key]

    def _energy(self, image: torch.Tensor, log_unary: torch.Tensor):
        """The function Q (N, P, C) -> -E: log_unary + sum_k w_k n_k K_k (n_k Q) for Potts,
        log_unary - (sum_k w_k n_k K_k (n_k Q)) mu^T for a compatibility matrix."""
        h, w = image.shape[-2:]
        position, pos_norm = self._smoothness_filter(h, w, log_unary)
        features = pixel_features(image, self.bi_xy_std, self.bi_rgb_std)
        appearance, bi_norm = self._normalised_filter(features)
        parts = [(position, pos_norm, self.pos_w * pos_norm), (appearance, bi_norm, self.bi_w * bi_norm)]
        if self.compatibility == "potts":  # the unary is summed in the same pass
            return summed_filters(parts, extra=log_unary)
        messages = summed_filters(parts)
        return lambda q: (-messages(q) @ self.compat.to(q.dtype).t()).add_(log_unary)

    def forward(self, logits: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
        _check_inputs(logits, image)
        n, c, h, w = logits.shape
        # (N, P, C) contiguous: reshape alone would give a channel-first view, and every
        # tensor computed from it (Q, the splat input) would keep that layout
        log_unary = F.log_softmax(logits, dim=1).permute(0, 2, 3, 1).reshape(n, h * w, c).contiguous()
        if self.num_iterations <= 0:
            return log_unary.reshape(n, h, w, c).permute(0, 3, 1, 2).contiguous()
        energy_of = self._energy(image.to(logits.dtype), log_unary)

        energy = log_unary  # -E, up to a per-pixel constant
        # Potts messages with non-negative weights are >= 0, so every row of -E holds a value
        # >= max(log_unary) >= -log C: exp cannot underflow a whole row, and no row maximum
        # is needed unless exp overflows (seen in the row sums)
        bounded_below = self.compatibility == "potts" and bool(self.pos_w >= 0) and bool(self.bi_w >= 0)
        q = None  # without autograd, each iteration's Q reuses the previous one's memory
        for _ in range(self.num_iterations):
            q = softmax_rows(energy, rows_bounded_below=bounded_below, out=q)
            energy = energy_of(q)
        log_q = log_softmax_rows(energy, rows_bounded_below=bounded_below)
        return log_q.reshape(n, h, w, c).permute(0, 3, 1, 2).contiguous()


def log_softmax_rows(x: torch.Tensor, *, rows_bounded_below: bool = False) -> torch.Tensor:
    """log_softmax over the last dim of contiguous (..., P, C), as ``softmax_rows``: x minus
    the log of the row sums of exp(x), the row maximum taken out first only where needed."""
    ones = x.new_ones(x.shape[-1], 1)
    if rows_bounded_below:
        total = torch.exp(x) @ ones
        if math.isfinite(float(total.detach().sum())):
            return x - torch.log(total)
    shift = x.detach().transpose(-1, -2).amax(-2).unsqueeze(-1)  # (..., P, 1)
    shifted = x - shift
    return shifted - torch.log(torch.exp(shifted) @ ones)


def softmax_rows(
    x: torch.Tensor, *, rows_bounded_below: bool = False, out: torch.Tensor | None = None
) -> torch.Tensor:
    """softmax over the last dim of contiguous (..., P, C) with small C; same values as
    ``torch.softmax(x, -1)`` (to float rounding), as a contiguous tensor (``out``'s memory
    when given).

    CPU softmax and reductions over a short contiguous last dim are slow, so: exp, and the
    row sum as a matrix-vector product. Where the caller knows that every row holds a value
    >= -log C (``rows_bounded_below``: no row can underflow), exp goes first and the row
    maximum is subtracted only if a row sum overflowed; otherwise it is subtracted first (a
    reduction over a transposed view). ``out``: a tensor of x's shape to write into where
    autograd is not recording (one allocation fewer per mean-field iteration)."""
    ones = x.new_ones(x.shape[-1], 1)
    in_place = not (torch.is_grad_enabled() and x.requires_grad)
    if not in_place or out is None or out.shape != x.shape or out.dtype != x.dtype:
        out = None
    if rows_bounded_below:
        e = torch.exp(x, out=out)
        total = e @ ones
        if math.isfinite(float(total.detach().sum())):
            return e.mul_(total.reciprocal_()) if in_place else e / total
    shift = x.detach().transpose(-1, -2).amax(-2).unsqueeze(-1)  # (..., P, 1)
    e = torch.sub(x, shift, out=out).exp_() if in_place else torch.exp(x - shift)
    total = e @ ones
    return e.mul_(total.reciprocal_()) if in_place else e / total


def _check_options(compatibility: str, num_classes: int | None, stds: tuple) -> None:
    if compatibility not in _COMPATIBILITIES:
        raise ValueError(f"compatibility must be one of {_COMPATIBILITIES}, got {compatibility!r}")
    if compatibility == "matrix" and not num_classes:
        raise ValueError("compatibility='matrix' needs num_classes")
    if min(stds) <= 0:
        raise ValueError("standard deviations must be positive")


def _check_inputs(logits: torch.Tensor, image: torch.Tensor) -> None:
    if logits.dim() != 4 or image.dim() != 4:
        raise ValueError("logits must be (N, C, H, W) and image (N, 3, H, W)")
    if image.shape[0] != logits.shape[0] or image.shape[2:] != logits.shape[2:]:
        raise ValueError(
            f"image {tuple(image.shape)} does not match logits {tuple(logits.shape)} "
            "in batch size or spatial size"
        )
    if image.shape[1] != 3:
        raise ValueError(f"image must have 3 channels, got {image.shape[1]}")
