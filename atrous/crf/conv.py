"""ConvCRF (Teichmann & Cipolla, "Convolutional CRFs for Semantic Segmentation", BMVC 2019 /
arXiv 1805.04777): mean-field inference of the fully connected CRF with every message
truncated to a k x k window, computed on a grid downsampled by ``blur``.

Same kernels and meaning as DenseCRF (smoothness on positions, appearance on positions and
colours, Potts weights ``pos_w`` and ``bi_w``); the paper's defaults are filter size 7 and
blur 4. Variants of the paper: ``compatibility="matrix"`` learns the label compatibility
("+C"), ``trainable_kernels=True`` learns the kernel widths ("+T"). Weights are always
``nn.Parameter``s.

Memory: the window weights are computed once per forward at the blurred resolution,
(B, k*k, H/blur, W/blur) per forward, the two kernels merged into one (symmetric
normalisation folded in); a message is a loop over the k*k shifted views of the padded
marginals, never an unfolded (B, C, k*k, H, W) tensor.

Deviation from the reference implementation (default_conf there: no normalisation, a 0.2 blend
between unary and message, colour features without position): kernels are normalised
symmetrically by default, exactly as in DenseCRF, so the same parameters mean the same thing
in both layers; ``normalization="none"`` gives raw Gaussian sums, ``message_weight=0.2`` the
blend ``(1 - w) log U + w M`` and ``appearance_positions=False`` the colour-only appearance
kernel. Differences that remain (tests/test_crf.py): the reference runs its first message on
the log-probabilities (its softmax of the unary is switched off), where atrous starts mean field
from the unary's probabilities as the paper does; with ``blur > 1`` the reference normalises at
full resolution and pads the pooling grid on both sides, atrous normalises on the pooled grid
and pads at the end.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from atrous.crf.dense import _check_inputs, _check_options

__all__ = ["CONV_PRESETS", "ConvCRF", "conv_crf_preset"]

_NORMALIZATIONS = ("symmetric", "none")

# Named configurations (docs/crf.md, "ConvCRF presets").
CONV_PRESETS: dict[str, dict[str, Any]] = {
    # atrous' default: the paper's window (7x7 on a grid blurred by 4) and mean-field update
    # (log U + M), kernels normalised symmetrically as DenseCRF's, so that the same widths and
    # weights mean the same thing in both layers; DenseCRF's (pydensecrf's) kernel parameters
    "atrous": dict(filter_size=7, blur=4, pos_xy_std=3.0, pos_w=3.0, bi_xy_std=80.0, bi_rgb_std=13.0, bi_w=10.0,
                   normalization="symmetric"),
    # the reference implementation's default_conf (Teichmann's convcrf.py): 11x11, blur 4, no
    # normalisation, 0.2 blend of unary and message, colour-only appearance kernel
    "reference": dict(filter_size=11, blur=4, pos_xy_std=3.0, pos_w=3.0, bi_xy_std=80.0, bi_rgb_std=13.0, bi_w=10.0,
                      normalization="none", message_weight=0.2, appearance_positions=False),
}


def conv_crf_preset(name: str, **overrides: Any) -> ConvCRF:
    """A ConvCRF with one of CONV_PRESETS' configurations ("atrous", "reference"); add
    compatibility="matrix", num_classes=K for "+C" and trainable_kernels=True for "+T"."""
    if name not in CONV_PRESETS:
        raise ValueError(f"unknown ConvCRF preset {name!r}; choose from {sorted(CONV_PRESETS)}")
    return ConvCRF(**{**CONV_PRESETS[name], **overrides})


class ConvCRF(nn.Module):
    """Convolutional CRF; ``crf(logits, image) -> log Q`` (N, C, H, W), image in [0, 255]."""

    def __init__(
        self,
        num_iterations: int = 5,
        filter_size: int = 7,
        blur: int = 4,
        pos_xy_std: float = 3.0,
        pos_w: float = 3.0,
        bi_xy_std: float = 80.0,
        bi_rgb_std: float = 13.0,
        bi_w: float = 10.0,
        *,
        compatibility: str = "potts",
        num_classes: int | None = None,
        trainable_kernels: bool = False,
        normalization: str = "symmetric",
        message_weight: float | None = None,
        appearance_positions: bool = True,
    ) -> None:
        super().__init__()
        if filter_size < 1 or filter_size % 2 == 0:
            raise ValueError(f"filter_size must be odd and positive, got {filter_size}")
        if blur < 1:
            raise ValueError(f"blur must be >= 1, got {blur}")
        _check_options(compatibility, num_classes, (pos_xy_std, bi_xy_std, bi_rgb_std))
        if normalization not in _NORMALIZATIONS:
            raise ValueError(f"normalization must be one of {_NORMALIZATIONS}")
        self.num_iterations = int(num_iterations)
        self.filter_size = int(filter_size)
        self.blur = int(blur)
        self.compatibility = compatibility
        self.num_classes = num_classes
        self.trainable_kernels = bool(trainable_kernels)
        self.normalization = normalization
        self.appearance_positions = bool(appearance_positions)
        if message_weight is not None and not 0 < message_weight <= 1:
            raise ValueError(f"message_weight must be in (0, 1], got {message_weight}")
        for name, value in (
            ("pos_xy_std", pos_xy_std),
            ("bi_xy_std", bi_xy_std),
            ("bi_rgb_std", bi_rgb_std),
        ):
            tensor = torch.tensor(float(value))
            if trainable_kernels:
                self.register_parameter(name, nn.Parameter(tensor))
            else:
                self.register_buffer(name, tensor)
        self.pos_w = nn.Parameter(torch.tensor(float(pos_w)))
        self.bi_w = nn.Parameter(torch.tensor(float(bi_w)))
        if compatibility == "matrix":
            self.compat = nn.Parameter(1.0 - torch.eye(num_classes))
        # the reference code's blend of unary and message (its "weight", 0.2); None: log U + M
        self.message_weight = None if message_weight is None else nn.Parameter(torch.tensor(float(message_weight)))

    def config(self) -> dict[str, Any]:
        return dict(
            kind="conv",
            num_iterations=self.num_iterations,
            filter_size=self.filter_size,
            blur=self.blur,
            pos_xy_std=float(self.pos_xy_std.detach()),
            pos_w=float(self.pos_w.detach()),
            bi_xy_std=float(self.bi_xy_std.detach()),
            bi_rgb_std=float(self.bi_rgb_std.detach()),
            bi_w=float(self.bi_w.detach()),
            compatibility=self.compatibility,
            num_classes=self.num_classes,
            trainable_kernels=self.trainable_kernels,
            normalization=self.normalization,
            message_weight=None if self.message_weight is None else float(self.message_weight.detach()),
            appearance_positions=self.appearance_positions,
        )

    def extra_repr(self) -> str:
        return ", ".join(f"{k}={v}" for k, v in self.config().items() if k != "kind")

    def forward(self, logits: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
        _check_inputs(logits, image)
        n, c, h, w = logits.shape
        log_unary = F.log_softmax(logits, dim=1)
        if self.num_iterations <= 0:
            return log_unary
        kernel = self._window_kernel(image.to(logits.dtype))  # (N, k*k, h', w')
        energy = log_unary
        for _ in range(self.num_iterations):
            q = torch.softmax(energy, dim=1)
            message = self._message(q, kernel)
            if self.compatibility == "matrix":
                message = -torch.einsum("lm,nmhw->nlhw", self.compat.to(message.dtype), message)
            if self.message_weight is None:
                energy = log_unary + message
            else:
                energy = (1 - self.message_weight) * log_unary + self.message_weight * message
        return F.log_softmax(energy, dim=1)

    # -- message passing -------------------------------------------------------------------

    def _downsample(self, x: torch.Tensor) -> torch.Tensor:
        if self.blur == 1:
            return x
        return F.avg_pool2d(x, self.blur, stride=self.blur, ceil_mode=True)

    def _shifted(self, x: torch.Tensor):
        """Yield x shifted by every window offset (zero outside), as views of one padded copy."""
        k = self.filter_size
        span = k // 2
        hb, wb = x.shape[-2:]
        padded = F.pad(x, (span, span, span, span))
        for dy in range(k):
            for dx in range(k):
                yield padded[..., dy : dy + hb, dx : dx + wb]

    def _gaussian_window(self, features: torch.Tensor) -> torch.Tensor:
        """(N, d, h', w') features -> (N, k*k, h', w') exp(-|f_p - f_{p+o}|^2 / 2), 0 outside."""
        inside = torch.ones_like(features[:, :1])
        out = []
        for shifted, valid in zip(self._shifted(features), self._shifted(inside), strict=True):
            diff = features - shifted
            out.append(torch.exp(-0.5 * (diff * diff).sum(1)) * valid[:, 0])
        return torch.stack(out, dim=1)

    def _window_kernel(self, image: torch.Tensor) -> torch.Tensor:
        n, _, h, w = image.shape
        ys = torch.arange(h, device=image.device, dtype=image.dtype)
        xs = torch.arange(w, device=image.device, dtype=image.dtype)
        yy, xx = torch.meshgrid(ys, xs, indexing="ij")
        position = torch.stack([xx, yy])[None].expand(n, 2, h, w)
        # features averaged over each blur cell, then scaled (same as scaling first)
        position = self._downsample(position)
        colour = self._downsample(image)
        smooth = self._gaussian_window(position / self.pos_xy_std)
        appearance_features = colour / self.bi_rgb_std
        if self.appearance_positions:
            appearance_features = torch.cat([position / self.bi_xy_std, appearance_features], dim=1)
        appearance = self._gaussian_window(appearance_features)
        kernel = 0
        for window, weight in ((smooth, self.pos_w), (appearance, self.bi_w)):
            if self.normalization == "symmetric":
                # n_p K_po n_{p+o}: normalisation folded into the window weights
                norm = torch.rsqrt(window.sum(1, keepdim=True) + 1e-20)  # (N, 1, h', w')
                shifted_norm = torch.cat(list(self._shifted(norm)), dim=1)
                window = norm * window * shifted_norm
            kernel = kernel + weight * window
        return kernel

    def _message(self, q: torch.Tensor, kernel: torch.Tensor) -> torch.Tensor:
        h, w = q.shape[-2:]
        low = self._downsample(q)  # (N, C, h', w')
        message = torch.zeros_like(low)
        for i, shifted in enumerate(self._shifted(low)):
            message = message + kernel[:, i : i + 1] * shifted
        if self.blur == 1:
            return message
        hb, wb = message.shape[-2:]
        message = F.interpolate(
            message, size=(hb * self.blur, wb * self.blur), mode="bilinear", align_corners=False
        )
        return message[..., :h, :w]
