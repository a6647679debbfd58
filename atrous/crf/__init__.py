"""Conditional random fields that refine segmentation logits.

    crf = atrous.crf.DenseCRF()               # pydensecrf's parameters and meaning
    log_q = crf(logits, image)                # (N, C, H, W) logits, (N, 3, H, W) in [0, 255]
    labels = log_q.argmax(1); q = log_q.exp()

- ``DenseCRF``: fully connected CRF, mean field through a permutohedral lattice written in
  PyTorch (``method="exact"`` for the O(N^2) reference).
- ``ConvCRF``: the truncated-window ConvCRF.
- ``fit_crf``: fit a CRF's parameters on frozen (logits, image, target) batches.
- ``crf_from_config`` / ``crf.config()``: rebuild a CRF from a small dict.

Both layers return log Q of the last mean-field iteration (normalised log-probabilities).
Imports only torch.
"""

from atrous.crf.conv import CONV_PRESETS, ConvCRF, conv_crf_preset
from atrous.crf.dense import DENSE_PRESETS, DenseCRF, dense_crf_preset, pixel_features
from atrous.crf.fit import crf_from_config, fit_crf
from atrous.crf.permutohedral import ExactGaussianFilter, PermutohedralLattice

__all__ = [
    "CONV_PRESETS",
    "DENSE_PRESETS",
    "ConvCRF",
    "DenseCRF",
    "ExactGaussianFilter",
    "PermutohedralLattice",
    "conv_crf_preset",
    "crf_from_config",
    "dense_crf_preset",
    "fit_crf",
    "pixel_features",
]
