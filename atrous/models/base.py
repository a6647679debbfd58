"""The base class every segmentation model shares: any input size in, same-size logits out;
each model keeps the arguments it was built with, so that it describes itself (`config`, what
a checkpoint rebuilds it from) and rebuilds its own modules (`set_output_stride`)."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

# the arguments every builder takes (atrous.models.registry.register_model); the rest are options
CONTRACT_ARGUMENTS = ("num_classes", "in_channels", "backbone", "output_stride", "pretrained_backbone")

Call = tuple[tuple[Any, ...], dict[str, Any]]  # a constructor's positional and keyword arguments


def pad_to_multiple(x: torch.Tensor, divisor: int) -> torch.Tensor:
    """Zero-pad bottom and right so that height and width are multiples of `divisor`.
    While tracing it always pads (perhaps by zero): the trace must pad at other sizes."""
    height, width = x.shape[-2:]
    pad_h, pad_w = (-height) % divisor, (-width) % divisor
    if not torch.jit.is_tracing() and pad_h == 0 and pad_w == 0:
        return x
    return F.pad(x, (0, pad_w, 0, pad_h))


def constructor_signature(cls: type) -> inspect.Signature:
    """The parameters of `cls(...)`: those of its __init__ but self."""
    signature = inspect.signature(cls.__init__)
    return signature.replace(parameters=list(signature.parameters.values())[1:])


class SegmentationModel(nn.Module):
    """Pads the input to `self.divisor`, runs `segment`, upsamples every output bilinearly to
    the padded size and crops back to the input size.

    Subclasses implement `segment(x) -> dict[str, Tensor]` with the main logits under "out"
    (at any stride that divides the padded size) and, in training, auxiliary logits under
    other keys, weighted in the loss by `self.aux_weights[key]`.

    `model(x)` returns the (N, num_classes, H, W) logits; `model(x, return_aux=True)`
    returns the whole dict, every entry at (N, num_classes, H, W).

    `model.save_pretrained(directory)` and `model.push_to_hub(repo_id)` live on the floor that
    writes those files: atrous.checkpoints.hub attaches them to this class (`import atrous`
    does it); this floor never imports that one.
    """

    divisor: int = 32

    def __new__(cls, *args: Any, **kwargs: Any) -> SegmentationModel:
        """Keep the constructor's arguments (as Hugging Face's hub mixin does, whose `config`
        smp's models carry), whether the model is built by create_model or by its class."""
        model = super().__new__(cls)
        model._constructor_call = (args, dict(kwargs))
        return model

    def __init__(self, num_classes: int, in_channels: int = 3) -> None:
        super().__init__()
        if num_classes < 1:
            raise ValueError(f"num_classes must be at least 1, got {num_classes}")
        self.num_classes = num_classes
        self.in_channels = in_channels
        self.aux_weights: dict[str, float] = {}
        # what rebuilds the model (checkpoints): {} for a class that is not registered by name
        self.config: dict[str, Any] = self._recorded_config()
        # set by the engine / load_checkpoint: class names, palette, normalisation, ...
        self.meta: dict[str, Any] = {}

    def _recorded_config(self) -> dict[str, Any]:
        """What create_model records for the same arguments: the registered name, the
        contract's arguments (None: the paper's default) and the options given."""
        name = vars(type(self)).get("registered_name")  # set by register_model, not inherited
        if name is None:
            return {}
        args, kwargs = getattr(self, "_constructor_call", ((), {}))
        given = constructor_signature(type(self)).bind_partial(*args, **kwargs).arguments
        return {"name": name, "num_classes": self.num_classes, "in_channels": self.in_channels,
                "backbone": given.get("backbone"), "output_stride": given.get("output_stride"),
                "options": {k: v for k, v in given.items() if k not in CONTRACT_ARGUMENTS}}

    def set_output_stride(self, output_stride: int) -> SegmentationModel:
        """Run at another output stride with the same weights (DeepLab v3's evaluation at 8 of
        a model trained at 16): the model's constructor runs on it again with the arguments it
        was built with and `output_stride`, so that it is exactly the model built at that
        stride (DeepLab's ASPP rates doubled at 8, Chen et al. 2017, Sec. 4.1, unless given),
        and its weights, meta, mode, device and dtype are put back. Its modules are new (make
        an optimizer anew). A model that cannot run at that stride raises a ValueError saying
        so, and stays as it was."""
        name = self.config.get("name") or type(self).__name__
        if "output_stride" not in constructor_signature(type(self)).parameters:
            raise ValueError(f"model '{name}' cannot run at output stride {output_stride}: it has no output_stride")
        args, kwargs = self._constructor_call
        kwargs = {k: v for k, v in kwargs.items() if k != "pretrained_backbone"}  # its weights are its own
        rebuild, config = self._rebuilder(), self.config
        try:
            rebuild((args, {**kwargs, "output_stride": output_stride}))
        except Exception as err:
            rebuild((args, kwargs))
            if isinstance(err, ValueError):
                raise ValueError(f"model '{name}' cannot run at output stride {output_stride}: {err}") from err
            raise
        self.config = {**config, "output_stride": output_stride} if config else {}
        return self

    def _rebuilder(self) -> Callable[[Call], None]:
        """A function that runs this model's constructor on it again with other arguments,
        then puts back what the model holds now: weights, meta, config, mode, device, dtype."""
        state, meta, config, training = self.state_dict(), self.meta, self.config, self.training
        parameter = next(self.parameters(), None)

        def rebuild(call: Call) -> None:
            self._constructor_call = call
            type(self).__init__(self, *call[0], **call[1])
            if parameter is not None:
                self.to(device=parameter.device, dtype=parameter.dtype)
            self.load_state_dict(state)
            self.train(training)
            self.meta, self.config = meta, config

        return rebuild

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


def set_output_stride(model: SegmentationModel, output_stride: int) -> SegmentationModel:
    """`model.set_output_stride(output_stride)`, as a function."""
    return model.set_output_stride(output_stride)


def _upsample_and_crop(
    logits: torch.Tensor, padded_size: torch.Size, size: tuple[int, int]
) -> torch.Tensor:
    if logits.shape[-2:] != padded_size:
        logits = F.interpolate(logits, size=padded_size, mode="bilinear", align_corners=False)
    return logits[..., : size[0], : size[1]]


class HeadOutput(nn.Module):
    """One of a model's extra score heads seen as a model of its own: `forward(x)` gives that
    head's logits (N, K_head, H, W), e.g. the geometric head of FCN's SIFT Flow net
    (`create_model("fcn8s", 33, extra_heads={"geometric": 3})`), for evaluation. `meta` (class
    names, palette) is the caller's to set for the head's classes."""

    def __init__(self, model: SegmentationModel, head: str) -> None:
        super().__init__()
        heads = dict(((model.config or {}).get("options") or {}).get("extra_heads") or {})
        if head not in heads:
            raise ValueError(f"head '{head}' is not one of the model's extra heads "
                             f"({', '.join(heads) or 'it has none'}; 'out' is its main output)")
        self.model, self.head = model, head
        self.num_classes, self.in_channels = int(heads[head]), model.in_channels
        self.meta: dict[str, Any] = dict(getattr(model, "meta", None) or {})
        self.config = model.config

    def forward(self, x: torch.Tensor, return_aux: bool = False) -> torch.Tensor:
        return self.model(x, return_aux=True)[self.head]
