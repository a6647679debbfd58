"""The base class every segmentation model shares: any input size in, same-size logits out."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn


def pad_to_multiple(x: torch.Tensor, divisor: int) -> torch.Tensor:
    """Zero-pad bottom and right so that height and width are multiples of `divisor`.
    While tracing it always pads (perhaps by zero): the trace must pad at other sizes."""
    height, width = x.shape[-2:]
    pad_h, pad_w = (-height) % divisor, (-width) % divisor
    if not torch.jit.is_tracing() and pad_h == 0 and pad_w == 0:
        return x
    return F.pad(x, (0, pad_w, 0, pad_h))


class SegmentationModel(nn.Module):
    """Pads the input to `self.divisor`, runs `segment`, upsamples every output bilinearly to
    the padded size and crops back to the input size.

    Subclasses implement `segment(x) -> dict[str, Tensor]` with the main logits under "out"
    (at any stride that divides the padded size) and, in training, auxiliary logits under
    other keys, weighted in the loss by `self.aux_weights[key]`.

    `model(x)` returns the (N, num_classes, H, W) logits; `model(x, return_aux=True)`
    returns the whole dict, every entry at (N, num_classes, H, W).
    """

    divisor: int = 32

    def __init__(self, num_classes: int, in_channels: int = 3) -> None:
        super().__init__()
        if num_classes < 1:
            raise ValueError(f"num_classes must be at least 1, got {num_classes}")
        self.num_classes = num_classes
        self.in_channels = in_channels
        self.aux_weights: dict[str, float] = {}
        # set by atrous.create_model: what is needed to rebuild the model (checkpoints)
        self.config: dict[str, Any] = {}
        # set by the engine / load_checkpoint: class names, palette, normalisation, ...
        self.meta: dict[str, Any] = {}

    def save_pretrained(self, directory: str, **card: Any) -> str:
        """Write this model to `directory` as a pretrained folder (weights, config.json and a
        README.md model card; `card`: metrics=..., training=...): the one method here that
        reaches a floor above, by name, since a model is what people save
        (atrous.checkpoints.pretrained.save_pretrained does the work)."""
        import importlib

        return importlib.import_module("atrous.checkpoints.pretrained").save_pretrained(self, directory, **card)

    def set_output_stride(self, output_stride: int) -> SegmentationModel:
        """Run at another output stride with the same weights (DeepLab v3's evaluation at 8 of
        a model trained at 16): exactly the model create_model builds at that stride. The
        registry rebuilds it (atrous.models.registry.set_output_stride), reached by name as
        the registry sits beside this base class and imports it."""
        import importlib

        return importlib.import_module("atrous.models.registry").set_output_stride(self, output_stride)

    def segment(self, x: torch.Tensor) -> dict[str, torch.Tensor]:  # pragma: no cover
        raise NotImplementedError

    def _check_input(self, x: torch.Tensor) -> None:
        if x.ndim != 4 or x.shape[1] != self.in_channels:
            raise ValueError(
                f"expected input of shape (N, {self.in_channels}, H, W), got {tuple(x.shape)}"
            )
        if not x.is_floating_point():
            raise ValueError(f"expected a float input tensor, got {x.dtype}")

    def forward(
        self, x: torch.Tensor, return_aux: bool = False
    ) -> torch.Tensor | dict[str, torch.Tensor]:
        self._check_input(x)
        height, width = x.shape[-2:]
        padded = pad_to_multiple(x, self.divisor)
        outputs = self.segment(padded)
        if not return_aux:
            outputs = {"out": outputs["out"]}
        resized = {
            key: _upsample_and_crop(logits, padded.shape[-2:], (height, width))
            for key, logits in outputs.items()
        }
        return resized if return_aux else resized["out"]


def _upsample_and_crop(
    logits: torch.Tensor, padded_size: torch.Size, size: tuple[int, int]
) -> torch.Tensor:
    if logits.shape[-2:] != padded_size:
        logits = F.interpolate(logits, size=padded_size, mode="bilinear", align_corners=False)
    return logits[..., : size[0], : size[1]]
