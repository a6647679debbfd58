"""Reference computations written out by hand in NumPy (float64), for tests that compare
atrous' layers with an independent calculation: convolution as the sum over its taps, max
pooling as the maximum over its window, bilinear resizing from its half-pixel formula. Nothing
here calls torch's convolution, pooling or interpolation."""

from __future__ import annotations

import numpy as np
import torch


def conv(x: np.ndarray, weight: torch.Tensor, bias: torch.Tensor | None = None) -> np.ndarray:
    """'Same' cross-correlation of (C, H, W) with (O, C, k, k), zero padding, stride 1."""
    w = weight.detach().double().numpy()
    k = w.shape[-1]
    pad = k // 2
    _, height, width = x.shape
    padded = np.pad(x, ((0, 0), (pad, pad), (pad, pad)))
    out = np.zeros((w.shape[0], height, width))
    for u in range(k):
        for v in range(k):
            out += np.einsum("oc,chw->ohw", w[:, :, u, v], padded[:, u : u + height, v : v + width])
    if bias is not None:
        out += bias.detach().double().numpy()[:, None, None]
    return out


def max_pool(x: np.ndarray, k: int = 5) -> np.ndarray:
    """k x k max pooling, stride 1, the window clipped at the border."""
    pad = k // 2
    _, height, width = x.shape
    padded = np.pad(x, ((0, 0), (pad, pad), (pad, pad)), constant_values=-np.inf)
    windows = [padded[:, u : u + height, v : v + width] for u in range(k) for v in range(k)]
    return np.max(windows, axis=0)


def interpolation_matrix(out_size: int, in_size: int) -> np.ndarray:
    """Rows of bilinear weights with half-pixel centres (align_corners=False)."""
    matrix = np.zeros((out_size, in_size))
    for i in range(out_size):
        source = max((i + 0.5) * in_size / out_size - 0.5, 0.0)
        low = min(int(np.floor(source)), in_size - 1)
        high = min(low + 1, in_size - 1)
        fraction = source - low
        matrix[i, low] += 1 - fraction
        matrix[i, high] += fraction
    return matrix


def bilinear(x: np.ndarray, height: int, width: int) -> np.ndarray:
    rows, cols = interpolation_matrix(height, x.shape[1]), interpolation_matrix(width, x.shape[2])
    return np.einsum("ih,chw,jw->cij", rows, x, cols)


def relu(x: np.ndarray) -> np.ndarray:
    return np.maximum(x, 0)


def softmax(x: np.ndarray, axis: int = 0) -> np.ndarray:
    shifted = np.exp(x - x.max(axis=axis, keepdims=True))
    return shifted / shifted.sum(axis=axis, keepdims=True)
