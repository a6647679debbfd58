"""The one inference path (eval, predict, serve, benchmarks): `infer(model, images)`.

Views, as the papers evaluate (DeepLab v2/v3/v3+ and PSPNet: multi-scale and flipped
inputs; Cityscapes and ADE20K: sliding windows):

- scales: the input resized (bilinear, align_corners=False) to round(H * s) x round(W * s),
  run, its probabilities resized back to H x W;
- flip: the input mirrored left-right, the output mirrored back;
- window/stride: overlapping tiles of the (scaled) input, flush with the right and bottom
  borders; where the input is smaller than the window it is zero-padded (the dataset's mean
  colour after normalisation, as the training crops) at the bottom and right. Tile
  probabilities are averaged where tiles overlap.

The scores are log(mean over views of the class probabilities), so that their softmax is
that mean and they feed the CRFs as logits. With a single view they are the model's logits
(softmax(logits) is then the probability itself). Binary and multilabel models (the task in
model.meta, atrous.data.tasks) average each output's sigmoid probability instead, and the
scores are logit(mean) = log(p / (1 - p)), whose sigmoid is that mean.

Precision: "fp32" runs the model as it is (exact). The fast path, "auto" (the default),
folds batch norm into the convolutions (a copy; atrous.inference.fold) and picks the
arithmetic: bf16 autocast with channels-last on a CPU with native bf16 (AVX512-BF16, AMX)
and on CUDA GPUs that have bf16 (fp16 on older ones), fp32 elsewhere. "bf16" and "fp16"
force that arithmetic, folded too.
"""

from __future__ import annotations

import contextlib
import copy
import weakref
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from atrous.data.tasks import probabilities, scores_of_mean, task_of
from atrous.errors import UserError
from atrous.inference.fold import fold_batch_norm
from atrous.runtime.device import eval_mode, resolve_precision

_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}
TILE_BATCH = 4  # tiles run at once: memory stays bounded whatever the image size


@dataclass(frozen=True)
class Views:
    """Which views `infer` averages: scales x flips, each whole or in sliding windows."""

    scales: tuple[float, ...] = (1.0,)
    flip: bool = False
    window: tuple[int, int] | None = None  # (height, width)
    stride: tuple[int, int] | None = None  # (vertical, horizontal)

    @property
    def count(self) -> int:
        return len(self.scales) * (2 if self.flip else 1)


def make_views(
    scales: Sequence[float] = (1.0,),
    flip: bool = False,
    window: int | Sequence[int] | None = None,
    stride: int | Sequence[int] | None = None,
) -> Views:
    """Checked views; an impossible option is a one-line UserError naming it. `window` and
    `stride` are one side for both dimensions or (height, width); the stride defaults to two
    thirds of the window (mmsegmentation's configs slide 769-pixel windows by 513)."""
    scales = tuple(float(s) for s in scales)
    if not scales:
        raise UserError("scales needs at least one scale", argument="scales")
    bad = [s for s in scales if not (s > 0 and s < float("inf"))]
    if bad:
        raise UserError(f"scales must be positive and finite, got {bad[0]:g}", argument="scales")
    if window is None:
        if stride is not None:
            raise UserError("stride needs window (the window that slides)", argument=("stride", "window"))
        return Views(scales, bool(flip))
    window = _pair(window, "window")
    stride = tuple(max(1, (2 * w) // 3) for w in window) if stride is None else _pair(stride, "stride")
    if stride[0] > window[0] or stride[1] > window[1]:
        raise UserError(f"stride {stride[0]} {stride[1]} must not exceed the window {window[0]} {window[1]} "
                        "(tiles would leave gaps)", argument="stride")
    return Views(scales, bool(flip), window, stride)


def _pair(value: int | Sequence[int], option: str) -> tuple[int, int]:
    values = [value] if isinstance(value, int) else list(value)
    if len(values) not in (1, 2) or not all(isinstance(v, int) for v in values):
        raise UserError(f"{option} takes one or two whole numbers (height [width]), got {value}", argument=option)
    if min(values) < 1:
        raise UserError(f"{option} must be at least 1 pixel, got {min(values)}", argument=option)
    return (values[0], values[-1])


class InferenceModel:
    """A model ready for inference. "fp32" runs the model itself, exactly as `model(x)`.
    Any other precision runs a copy with batch norm folded into the convolutions (the
    user's model untouched), under bf16/fp16 autocast and channels-last when that is the
    arithmetic. A model run by another engine that sets its own arithmetic (an OpenVINO
    graph: `model.at_precision(precision)`) runs at the resolved precision through it.
    Calling it returns float32 logits on the model's device."""

    def __init__(self, model: nn.Module, precision: str = "auto") -> None:
        self.device = next(model.parameters()).device
        self.precision = resolve_precision(precision, self.device)  # the arithmetic: fp32, bf16 or fp16
        self.exact = precision == "fp32"
        self.task = task_of(getattr(model, "meta", None))  # softmax (multiclass) or sigmoids (binary, multilabel)
        self.channels_last = self.autocast = self.precision in _DTYPES
        at_precision = getattr(model, "at_precision", None)
        if at_precision is not None:  # a graph that its engine runs (OpenVINO): the engine does the arithmetic
            self.network = at_precision(self.precision)
            self.channels_last = self.autocast = False
        elif self.exact:
            self.network = model
        else:
            example = _example_input(model, self.device)
            folded = copy.deepcopy(model).eval() if example is None else fold_batch_norm(model, example)
            self.network = folded.requires_grad_(False)
            if self.channels_last:
                self.network = self.network.to(memory_format=torch.channels_last)

    @torch.no_grad()
    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        images = images.to(self.device)
        if self.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        autocast = (torch.autocast(self.device.type, dtype=_DTYPES[self.precision])
                    if self.autocast else contextlib.nullcontext())
        with eval_mode(self.network), autocast:
            return self.network(images).float().contiguous()


def _example_input(model: nn.Module, device: torch.device) -> torch.Tensor | None:
    """A small input for the batch-norm folding's data-flow pass and check; None when the
    model has nothing to fold (no batch norm, or no convolution to fold it into)."""
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    if not convs or not any(isinstance(m, nn.BatchNorm2d) for m in model.modules()):
        return None
    channels = getattr(model, "in_channels", None) or convs[0].in_channels
    generator = torch.Generator().manual_seed(0)
    return torch.randn(1, channels, 64, 64, generator=generator).to(device)


def prepare(model: nn.Module | InferenceModel, precision: str = "auto") -> InferenceModel:
    """`model` ready for many `infer` calls (the copy and conversions are made once).

    The prepared copy is kept with the model (a weak reference: it goes with the model) and
    given again while the model is unchanged: the same parameter and buffer tensors, at the
    same storage, with the same version counters (an optimizer step, `load_state_dict`,
    `.to()`, a batch norm's running statistics in training mode all advance or replace
    them), and the same modules with the same settings (`extra_repr`: strides, dilations).
    A model changed since is prepared anew (its copies of the earlier state dropped). Writes
    through `tensor.data`, which autograd does not see either, are not seen: prepare such a
    model with `InferenceModel(model)`."""
    if isinstance(model, InferenceModel):
        return model
    device = next(model.parameters()).device
    key = (precision, resolve_precision(precision, device), str(device))  # "auto" follows the machine
    stamp = _stamp(model)
    cached = {k: v for k, v in _PREPARED.get(model, {}).items() if _same_stamp(v[0], stamp)}  # stale ones go
    if key in cached:
        return cached[key][1]
    prepared = InferenceModel(model, precision)
    if all(m is not model for m in prepared.network.modules()):  # fp32, exported graphs: the model itself
        cached[key] = (stamp, prepared)
    if cached:
        _PREPARED[model] = cached
    else:
        _PREPARED.pop(model, None)
    return prepared


# model -> {(precision asked, precision resolved, device): (its stamp when prepared, the prepared model)}
_PREPARED: weakref.WeakKeyDictionary[nn.Module, dict[tuple[str, str, str], tuple[list, InferenceModel]]] = (
    weakref.WeakKeyDictionary())


def _stamp(model: nn.Module) -> list[tuple]:
    """What identifies `model`'s current state, cheaply: per module its name, itself (a weak
    reference), its settings; per tensor its name, itself, storage and version counter."""
    stamp: list[tuple] = [(name, weakref.ref(module), module.extra_repr()) for name, module in model.named_modules()]
    for name, tensor in (*model.named_parameters(), *model.named_buffers()):
        stamp.append((name, weakref.ref(tensor), tensor.data_ptr(), tensor._version))
    return stamp


def _same_stamp(old: list[tuple], new: list[tuple]) -> bool:
    """The same modules and tensors (the weak references point to the same live objects),
    the same settings, storages and versions."""
    if len(old) != len(new):
        return False
    for before, now in zip(old, new, strict=True):
        if before[0] != now[0] or before[2:] != now[2:] or before[1]() is None or before[1]() is not now[1]():
            return False
    return True


@torch.no_grad()
def infer(
    model: nn.Module | InferenceModel,
    images: torch.Tensor,
    *,
    scales: Sequence[float] = (1.0,),
    flip: bool = False,
    window: int | Sequence[int] | None = None,
    stride: int | Sequence[int] | None = None,
    precision: str = "auto",
    tile_batch: int = TILE_BATCH,
) -> torch.Tensor:
    """(N, C, H, W) images, normalised as for `model(x)` -> (N, K, H, W) float32 scores on
    the model's device whose softmax is the class probability averaged over all views
    (binary and multilabel models: whose sigmoid is each label's averaged probability).
    A model from `prepare()` keeps the precision it was prepared with."""
    views = make_views(scales, flip, window, stride)
    return infer_views(prepare(model, precision), images, views, tile_batch=tile_batch)


def infer_views(net: InferenceModel, images: torch.Tensor, views: Views, *, tile_batch: int = TILE_BATCH) -> torch.Tensor:
    """`infer` with checked views and a prepared model (what eval and predict call per batch)."""
    if images.ndim != 4:
        raise ValueError(f"expected images of shape (N, C, H, W), got {tuple(images.shape)}")
    images = images.to(net.device)
    size = images.shape[-2:]
    if views.count == 1 and views.window is None and views.scales[0] == 1.0:
        return net(images)  # one whole view: the logits themselves
    total: torch.Tensor | None = None  # (N, K, H, W) sum of probabilities over views
    for scale in views.scales:
        scaled = _resize(images, _scaled_size(size, scale))
        batch = torch.cat([scaled, scaled.flip(-1)]) if views.flip else scaled
        if views.window is None:
            probs = probabilities(net(batch), net.task)
        else:
            probs = _slide(net, batch, views.window, views.stride, tile_batch)
        if views.flip:
            probs = probs[: len(images)] + probs[len(images) :].flip(-1)
        probs = _resize(probs, size)
        total = probs if total is None else total + probs
    return scores_of_mean(total / views.count, net.task)


def _scaled_size(size: torch.Size, scale: float) -> tuple[int, int]:
    return (max(1, int(size[0] * scale + 0.5)), max(1, int(size[1] * scale + 0.5)))


def _resize(x: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    return F.interpolate(x, size=tuple(size), mode="bilinear", align_corners=False)


def tile_starts(length: int, window: int, stride: int) -> list[int]:
    """Where tiles of `window` start along a side of `length`, `stride` apart, the last one
    flush with the end; a single tile at 0 when the side is no longer than the window."""
    if length <= window:
        return [0]
    starts = list(range(0, length - window, stride))
    return starts + [length - window]


def tile_coverage(length: int, window: int, stride: int) -> torch.Tensor:
    """(length,) float32: how many tiles of `tile_starts` cover each position. The tiles of
    an image form a grid, so a pixel's count is its row's times its column's."""
    count = torch.zeros(length)
    for start in tile_starts(length, window, stride):
        count[start : start + window] += 1
    return count


def tile_probabilities(net: InferenceModel, crops: torch.Tensor) -> torch.Tensor:
    """(T, C, h, w) normalised tiles -> (T, K, h, w) their probabilities, what the sliding
    windows average (here and in atrous.inference.scene): the softmax over the classes, each
    logit's sigmoid for a binary or multilabel model (`net.task`)."""
    return probabilities(net(crops), net.task)


def _slide(
    net: InferenceModel, images: torch.Tensor, window: tuple[int, int], stride: tuple[int, int], tile_batch: int
) -> torch.Tensor:
    """(B, C, H, W) -> (B, K, H, W) probabilities averaged over overlapping tiles, run
    `tile_batch` tiles at a time."""
    height, width = images.shape[-2:]
    win_h, win_w = window
    padded = F.pad(images, (0, max(win_w - width, 0), 0, max(win_h - height, 0)))  # zeros: the mean colour
    pad_h, pad_w = padded.shape[-2:]
    corners = [(top, left) for top in tile_starts(pad_h, win_h, stride[0]) for left in tile_starts(pad_w, win_w, stride[1])]
    count = (tile_coverage(pad_h, win_h, stride[0])[:, None] * tile_coverage(pad_w, win_w, stride[1])).to(images.device)
    tiles = [(index, top, left) for index in range(len(images)) for top, left in corners]
    total: torch.Tensor | None = None  # (B, K, pad_h, pad_w)
    for first in range(0, len(tiles), max(1, tile_batch)):
        chunk = tiles[first : first + max(1, tile_batch)]
        crops = torch.stack([padded[i, :, t : t + win_h, c : c + win_w] for i, t, c in chunk])
        probs = tile_probabilities(net, crops)  # (T, K, win_h, win_w)
        if total is None:
            total = probs.new_zeros(len(images), probs.shape[1], pad_h, pad_w)
        for (i, t, c), tile in zip(chunk, probs, strict=True):
            total[i, :, t : t + win_h, c : c + win_w] += tile
    return (total / count)[..., :height, :width]
