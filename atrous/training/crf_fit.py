"""Decoupled CRF training, the body of `atrous fit-crf` (Teichmann & Cipolla, ConvCRF, Sec. 4).

The network is frozen; only the CRF's parameters (ConvCRF: Potts weights, optionally the
compatibility matrix and kernel widths; DenseCRF: the Potts weights or the compatibility
matrix) are fitted by Adam on the NLL of the CRF output over a training split. The fit is
written into the checkpoint's metadata, meta["crf"][kind] = {"init": constructor kwargs,
"state": the CRF's state_dict as lists, "fit": how it was fitted}, where `build_crf` (eval,
predict) finds it. The checkpoint is written once, at the end, atomically.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from atrous.checkpoints.checkpoint import load_checkpoint, save_checkpoint
from atrous.checkpoints.meta import normalisation
from atrous.crf import fit_crf
from atrous.data import build_dataset
from atrous.data.transforms import Normalize, RandomCrop
from atrous.errors import UserError
from atrous.inference.evaluate import predict_logits
from atrous.inference.refinement import build_crf
from atrous.models import SegmentationModel
from atrous.runtime.device import resolve_device

Batch = tuple[torch.Tensor, torch.Tensor, torch.Tensor]
MONITOR_BATCHES = 4  # batches on which the loss before / after is measured


class FrozenOutputs:
    """(logits, image 0..255, target) batches of a frozen model over `indices` of a dataset.

    Re-iterable: each pass visits every index once (shuffled, with fresh random crops, when
    `crop_size` is set), so `fit_crf` streams it without keeping logits in memory. Batches
    hold images of one size (a new batch starts when the size changes)."""

    def __init__(self, model: SegmentationModel, dataset, indices: Sequence[int], *, batch_size: int,
                 crop_size: int | None, precision: str, seed: int, ignore_index: int,
                 on_batch: Callable[[], None] | None = None) -> None:
        self.model, self.dataset, self.indices = model, dataset, list(indices)
        self.batch_size, self.precision, self.seed = batch_size, precision, seed
        self.crop = RandomCrop(crop_size, ignore_index) if crop_size else None
        self.normalize = Normalize(*normalisation(model.meta))
        self.device = next(model.parameters()).device
        self.on_batch = on_batch
        self.passes = 0

    def __iter__(self) -> Iterator[Batch]:
        rng = np.random.default_rng([self.seed, self.passes])
        self.passes += 1
        order = rng.permutation(self.indices) if self.crop else self.indices
        pending: list[tuple[torch.Tensor, torch.Tensor]] = []
        for index in order:
            raw, mask = self.dataset[int(index)]
            if self.crop is not None:
                raw, mask = self.crop(raw, mask, rng)
            if pending and (raw.shape != pending[0][0].shape or len(pending) == self.batch_size):
                yield self._batch(pending)
                pending = []
            pending.append((raw, mask))
        if pending:
            yield self._batch(pending)

    def _batch(self, pairs: list[tuple[torch.Tensor, torch.Tensor]]) -> Batch:
        raws = torch.stack([raw for raw, _ in pairs])  # (N, 3, H, W) uint8
        masks = torch.stack([mask for _, mask in pairs])  # (N, H, W) int64
        images = self.normalize(raws, masks)[0]
        logits = predict_logits(self.model, images, self.precision)  # no grad
        if self.on_batch is not None:
            self.on_batch()
        return logits, raws.to(self.device).float(), masks.to(self.device)


def mean_nll(crf: torch.nn.Module | None, batches: Sequence[Batch], ignore_index: int) -> float:
    """Mean NLL of the CRF output (of the network's softmax when `crf` is None) per batch."""
    losses = []
    with torch.no_grad():
        for logits, image, target in batches:
            log_q = F.log_softmax(logits, 1) if crf is None else crf(logits, image)
            losses.append(float(F.nll_loss(log_q, target, ignore_index=ignore_index)))
    return sum(losses) / len(losses)


def fit_checkpoint_crf(
    checkpoint: str,
    dataset: str,
    *,
    out: str | None = None,
    kind: str = "conv",
    crf_params: str | None = None,
    data_root: str | None = None,
    split: str = "train",
    num_classes: int | None = None,
    iters: int = 200,
    lr: float = 0.01,
    batch_size: int = 2,
    crop_size: int | None = None,
    max_images: int | None = None,
    precision: str = "fp32",
    device: str | None = None,
    seed: int = 0,
    synthetic_size: int = 128,
    progress: bool = False,
) -> dict[str, Any]:
    """Fit a `kind` CRF on `checkpoint`'s frozen outputs over `split` and write the checkpoint
    with the fit in meta["crf"][kind] to `out` (default: `checkpoint`, replaced atomically).

    The starting parameters are `crf_params` (a YAML/JSON file), else the checkpoint's earlier
    fit, else the layer's defaults. Returns a summary (losses before and after, the entry)."""
    for name, value in (("iters", iters), ("batch_size", batch_size), ("max_images", max_images),
                        ("crop_size", crop_size)):
        if value is not None and value < 1:
            raise UserError(f"{name} must be at least 1, got {value}", argument=name)
    if lr <= 0:
        raise UserError(f"lr must be positive, got {lr}", argument="lr")
    torch.manual_seed(seed)
    model = load_checkpoint(checkpoint).to(resolve_device(device))
    if model.meta.get("task", "multiclass") != "multiclass":
        raise UserError(f"{checkpoint} is a {model.meta['task']} model; fit-crf fits the CRF of multiclass models "
                        "(a binary model's CRF runs with the layer's defaults or crf_params)", argument="crf_params")
    data = build_dataset(dataset, split, data_root=data_root, num_classes=num_classes,
                         synthetic_size=synthetic_size)
    info = data.info
    if info.num_classes != model.num_classes:
        raise UserError(f"{checkpoint} predicts {model.num_classes} classes but dataset {dataset} "
                        f"has {info.num_classes}")
    if len(data) == 0:
        raise UserError(f"dataset {dataset} split '{split}' holds no images")
    crf = build_crf(kind, model, crf_params).float()
    if not any(p.requires_grad for p in crf.parameters()):
        raise UserError(f"the {kind} CRF has no trainable parameters")
    indices = range(min(len(data), max_images or len(data)))

    def outputs(stream_seed: int, on_batch=None) -> FrozenOutputs:
        return FrozenOutputs(model, data, indices, batch_size=batch_size, crop_size=crop_size,
                             precision=precision, seed=stream_seed, ignore_index=info.ignore_index,
                             on_batch=on_batch)

    monitor = [batch for _, batch in zip(range(MONITOR_BATCHES), outputs(seed + 1), strict=False)]
    network_loss = mean_nll(None, monitor, info.ignore_index)
    loss_before = mean_nll(crf, monitor, info.ignore_index)
    start = time.perf_counter()
    with _progress_bar(iters, progress) as update:
        losses = fit_crf(crf, outputs(seed, update), iters, lr, ignore_index=info.ignore_index)
    seconds = time.perf_counter() - start
    loss_after = mean_nll(crf, monitor, info.ignore_index)

    fit = dict(dataset=dataset, split=split, images=len(indices), iters=iters, lr=lr, batch_size=batch_size,
               crop_size=crop_size, seed=seed, monitor_images=sum(len(b[2]) for b in monitor),
               network_loss=network_loss, loss_before=loss_before,
               loss_after=loss_after, last_train_loss=losses[-1])
    entry = crf_entry(crf, fit)
    saved = dict(model.meta.get("crf") or {})
    saved[kind] = entry
    save_checkpoint(model, out or checkpoint, crf=saved)
    return dict(kind=kind, out=out or checkpoint, seconds=seconds, losses=losses, **fit, entry=entry)


def crf_entry(crf: torch.nn.Module, fit: dict[str, Any] | None = None) -> dict[str, Any]:
    """What `build_crf` needs to rebuild `crf` exactly, as JSON-serialisable lists."""
    init = {k: v for k, v in crf.config().items() if k != "kind"}
    state = {name: tensor.detach().cpu().tolist() for name, tensor in crf.state_dict().items()}
    return {"init": init, "state": state, **({"fit": fit} if fit else {})}


@contextlib.contextmanager
def _progress_bar(total: int, enabled: bool) -> Iterator[Callable[[], None]]:
    """A progress bar of `total` steps (or nothing); the context value advances it by one."""
    if not enabled:
        yield lambda: None
        return
    from atrous.runtime.progress import progress_bar

    with progress_bar(total, desc="fit-crf", unit="it") as bar:
        yield lambda: bar.update(1)


