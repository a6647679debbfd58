"""Training: iteration-based, DeepLab's poly schedule, exact resume, atomic checkpoints.

Writes into `out`:
- model.safetensors  the model (atrous.load_checkpoint rebuilds it)
- train_state.pt     weights, optimiser, step and RNG state, for --resume
- log.jsonl          one JSON line per epoch (and one when a run stops)
- metrics.json       evaluation on the validation split and a training summary
- config.json        the resolved training configuration
and, with save_pretrained, a folder to share (atrous.training.share).

Every sample is drawn and augmented from (seed, sample number) alone, so a run stopped
after N iterations and resumed gives the same weights as one that never stopped.

Launched by torchrun (`torchrun --nproc-per-node N -m atrous train ...`) the run is shared by
N processes: `batch_size` is the global batch, split across the ranks (and `grad_accum`
micro-batches, see atrous.training.global_batch); losses are normalised over the global batch
(atrous.losses) and gradients summed over the ranks, so that N processes train the
model one process trains, and a run stopped on N processes resumes on M. Rank 0 alone
writes files and the progress bar.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import time
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from atrous.checkpoints.checkpoint import save_checkpoint
from atrous.checkpoints.meta import model_meta
from atrous.checkpoints.weights import load_weights
from atrous.data import DataError, build_dataset, train_transform
from atrous.data.weights import class_weights
from atrous.errors import UserError
from atrous.losses import BatchTotals, build_loss, labelled_weight, total_loss
from atrous.models import SegmentationModel, create_model
from atrous.outputs import (
    require_writable_folder,
    write_atomic,
    write_json_atomic,
    write_text_atomic,
)
from atrous.runtime import distributed
from atrous.runtime.device import autocast, resolve_device, resolve_precision
from atrous.training.averaging import WeightAverage
from atrous.training.bootstrap import WithDuplicates, class_indices, hard_images
from atrous.training.config import DEFAULT_ITERS, RESUME_MAY_CHANGE, TrainConfig, config_json
from atrous.training.finetune import (
    freeze_backbone,
    frozen_batch_norms,
    parameter_groups,
    unknown_prefixes,
)
from atrous.training.global_batch import (
    GlobalBatchSampler,
    convert_sync_batchnorm,
    global_rows,
    micro_batch_size,
    shard_dropout,
)
from atrous.training.share import check_pretrained_out, save_run


def poly_lr(base_lr: float, step: int, total: int, power: float, warmup: int = 0) -> float:
    """DeepLab's poly policy: base * (1 - step / total) ** power, after a linear warm-up."""
    if step < warmup:
        return base_lr * (step + 1) / warmup
    return base_lr * (1 - step / total) ** power


def labels_at_stride(masks: torch.Tensor, stride: int) -> torch.Tensor:
    """(N, H, W) labels -> (N, ceil(H/s), ceil(W/s)): the label at the centre of each s x s cell
    (the bottom-right of the four central pixels when s is even); `masks` itself for s = 1."""
    if stride == 1:
        return masks
    height, width = masks.shape[-2:]
    rows, cols = (_cell_centres(side, -(-side // stride), masks.device) for side in (height, width))
    return masks[..., rows[:, None], cols]


def _cell_centres(side: int, cells: int, device: torch.device) -> torch.Tensor:
    centres = ((torch.arange(cells, device=device) + 0.5) * side / cells).long()
    return centres.clamp(max=side - 1)


def at_loss_stride(outputs: dict[str, torch.Tensor], masks: torch.Tensor,
                   stride: int) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """The outputs and labels the loss scores at `stride` (--loss-stride): every output resized
    bilinearly to the subsampled labels' grid, which samples it at the cells' centres. For a
    model whose score map has this stride, that gives its scores up to the smoothing of the
    round trip (bilinear x s, then back: about 6 % of each neighbour mixed in at s = 8); the
    paper's Caffe code scores the score map itself."""
    if stride == 1:
        return outputs, masks
    labels = labels_at_stride(masks, stride)
    size = labels.shape[-2:]
    resized = {key: torch.nn.functional.interpolate(value, size=size, mode="bilinear", align_corners=False)
               for key, value in outputs.items()}
    return resized, labels


class TrainStream(torch.utils.data.Dataset):
    """Sample number k -> the augmented pair, from (seed, k) alone: epoch k // n shuffles
    the dataset with its own generator; sample k augments with another."""

    def __init__(self, dataset: torch.utils.data.Dataset, transform, seed: int) -> None:
        self.dataset = dataset
        self.transform = transform
        self.seed = seed
        self._orders: dict[int, np.ndarray] = {}

    def __len__(self) -> int:  # unbounded in principle; the sampler decides
        return 2**62

    def _order(self, epoch: int) -> np.ndarray:
        if epoch not in self._orders:
            self._orders = {epoch: np.random.default_rng([self.seed, 0, epoch]).permutation(len(self.dataset))}
        return self._orders[epoch]

    def __getitem__(self, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        epoch, position = divmod(k, len(self.dataset))
        image, mask = self.dataset[int(self._order(epoch)[position])]
        return self.transform(image, mask, np.random.default_rng([self.seed, 1, k]))


def _build_optimizer(model: torch.nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    """The optimiser over the trainable parameters, one group per learning-rate multiplier
    (each group's lr is base * its "lr_mult" at every step)."""
    fused = True if cfg.fused_optimizer else None  # None: torch's default implementation
    groups = parameter_groups(model, cfg.lr_mult)
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=cfg.base_lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay,
                               fused=fused)
    return torch.optim.AdamW(groups, lr=cfg.base_lr, weight_decay=cfg.weight_decay, fused=fused)


def _total_iters(cfg: TrainConfig, dataset_length: int) -> int:
    if cfg.iters is not None:
        return cfg.iters
    if cfg.epochs is not None:
        return max(1, math.ceil(cfg.epochs * dataset_length / cfg.batch_size))
    return DEFAULT_ITERS


# the options that may differ between a run and its --resume; any other change would make
# the resumed run differ from one that never stopped
# (the number of processes is not an option: a run resumes on any number, see the module's docstring)
# of those, the ones a --resume keeps unless given again: --grad-accum lets a run started on
# 8 GPUs go on on 4 with the same global batch (batch norm then sees micro-batches of the
# new size); --compile is a property of the run


class Trainer:
    def __init__(self, cfg: TrainConfig) -> None:
        cfg.validate()
        self.cfg = cfg
        self.world = distributed.current_world()
        self.device = distributed.rank_device(resolve_device(cfg.device))
        self.rows = micro_batch_size(cfg.batch_size, self.world.size, cfg.grad_accum)  # per rank and micro-batch
        self.model_path = os.path.join(cfg.out, "model.safetensors")
        self.state_path = os.path.join(cfg.out, "train_state.pt")
        self.log_path = os.path.join(cfg.out, "log.jsonl")
        self._check_out_dir()
        torch.manual_seed(cfg.seed)
        self.dataset = build_dataset(cfg.dataset, cfg.train_split, data_root=cfg.data_root, num_classes=cfg.num_classes,
                                     synthetic_size=cfg.synthetic_size, synthetic_length=cfg.synthetic_length)
        if len(self.dataset) == 0:
            raise UserError(f"the {cfg.dataset} training split is empty")
        self.info = self.dataset.info
        self.init_report = None  # what --init-from loaded
        self.model = self._build_model()
        self.frozen_norms = self._fine_tuning()
        self.optimizer = _build_optimizer(self.model, cfg)
        self.precision = resolve_precision(cfg.precision, self.device)  # "auto" -> what runs here
        self.scaler = torch.amp.GradScaler(self.device.type) if self.precision == "fp16" else None
        self.items = self._bootstrapped()  # the dataset, hard images duplicated (--bootstrap-class)
        self.total = _total_iters(cfg, len(self.items))
        self.class_weights = self._class_weights()
        self.loss = build_loss(cfg.loss, ignore_index=self.info.ignore_index, class_weights=self.class_weights,
                               reduce=distributed.all_reduce_sum, **cfg.loss_settings())
        self.step = 0
        self.epoch_loss = [0.0, 0]  # running sum and count for the epoch's log line
        self.elapsed = 0.0
        self.adversary = self._build_adversary()
        self.average = WeightAverage(self.model, cfg.ema_decay) if cfg.ema_decay else None
        self.eval_dataset: torch.utils.data.Dataset | None = None  # set by train() for --eval-every
        if cfg.resume:
            self._load_state()
        self.ddp = self._data_parallel()
        self.net = self._compiled(self.ddp or self.model)  # what the forward pass runs

    def _check_out_dir(self) -> None:
        cfg = self.cfg
        if self.world.is_main:  # rank 0 alone writes the run's files (and makes the folder)
            require_writable_folder(cfg.out, "--out", keep=True)
        elif os.path.exists(cfg.out) and not os.path.isdir(cfg.out):
            raise UserError(f"--out {cfg.out} exists and is not a folder")
        if cfg.resume:
            if not os.path.isfile(self.state_path):
                raise UserError(f"--resume: no training state in {cfg.out} (expected {self.state_path})")
        elif os.path.exists(self.model_path) and not cfg.overwrite:
            raise UserError(
                f"{self.model_path} already exists; pass --resume to continue it, --overwrite to replace it, "
                "or choose another --out"
            )
        elif cfg.overwrite and self.world.is_main:  # a new run: the old run's state, log and metrics must not mix in
            for stale in (self.state_path, self.log_path, os.path.join(cfg.out, "metrics.json")):
                if os.path.exists(stale):
                    os.remove(stale)

    def _build_model(self) -> SegmentationModel:
        cfg = self.cfg
        try:
            model = create_model(cfg.model, self.info.num_classes, backbone=cfg.backbone,
                                 output_stride=cfg.output_stride, pretrained_backbone=cfg.pretrained_backbone,
                                 **cfg.model_options)
        except FileNotFoundError as err:
            raise UserError(str(err)) from err
        except (ValueError, TypeError) as err:
            raise UserError(f"--model {cfg.model}: {err}") from err
        if cfg.init_from and not cfg.resume:  # a resumed run's weights come from its own state
            self.init_report = load_weights(model, cfg.init_from)
            if self.world.is_main:
                print(self.init_report.line())
        model.meta = model_meta(self.info, cfg.mean, cfg.std)
        shard_dropout(model)  # dropout masks that do not depend on the number of ranks
        if self.world.distributed and cfg.sync_bn is not False:
            model = convert_sync_batchnorm(model, self.device)
        model.to(self.device)
        if cfg.channels_last:
            model.to(memory_format=torch.channels_last)
        return model

    def _fine_tuning(self) -> list[torch.nn.Module]:
        """--freeze backbone and --lr-mult applied to the model; returns the batch norms that
        stay in eval mode while training (--freeze backbone: the backbone's; --freeze-bn: all)."""
        cfg = self.cfg
        unknown = list(unknown_prefixes(self.model, cfg.lr_mult))
        if unknown:
            raise UserError(f"--lr-mult {unknown[0]}: not backbone, head or a parameter-name prefix of "
                            f"model {cfg.model}")
        if cfg.freeze == "backbone":
            try:
                freeze_backbone(self.model)
            except ValueError as err:
                raise UserError(f"--freeze backbone: {err}") from err
        if cfg.freeze_bn or cfg.freeze == "backbone":
            return frozen_batch_norms(self.model, backbone_only=not cfg.freeze_bn)
        return []

    def _data_parallel(self) -> torch.nn.parallel.DistributedDataParallel | None:
        """DDP over the ranks, gradients summed (each rank's loss is its share of the global loss)."""
        if not self.world.distributed:
            return None
        device_ids = [self.device.index] if self.device.type == "cuda" else None
        ddp = torch.nn.parallel.DistributedDataParallel(self.model, device_ids=device_ids)
        ddp.register_comm_hook(None, distributed.sum_gradients_hook)
        return ddp

    def _compiled(self, module: torch.nn.Module) -> torch.nn.Module:
        return torch.compile(module) if self.cfg.compile else module

    def _class_weights(self) -> torch.Tensor | None:
        if self.cfg.class_weights == "none":
            return None
        if not hasattr(self.dataset, "labels"):
            raise UserError(f"--class-weights {self.cfg.class_weights} needs mask files; dataset {self.cfg.dataset} has none")
        weights = class_weights(self.cfg.class_weights, self.dataset.labels(), self.info.num_classes,
                                void=self.info.ignore_index)
        return weights.to(self.device)

    def _bootstrapped(self) -> torch.utils.data.Dataset:
        if not self.cfg.bootstrap_class:
            return self.dataset
        hard = hard_images(self.dataset, class_indices(self.cfg.bootstrap_class, self.info.class_names))
        if self.world.is_main:
            print(f"bootstrapping: {len(hard)} of {len(self.dataset)} training images duplicated "
                  f"{self.cfg.bootstrap_copies}x ({', '.join(self.cfg.bootstrap_class)})")
        return WithDuplicates(self.dataset, hard, self.cfg.bootstrap_copies)

    def _build_adversary(self):
        if not self.cfg.adversarial:
            if self.cfg.adversarial_pretrain:
                raise UserError("--adversarial-pretrain trains the discriminator of --adversarial; add --adversarial")
            return None
        from atrous.training.adversarial import AdversarialTrainer

        return AdversarialTrainer.for_model(self.info.num_classes, weight=self.cfg.adversarial_weight,
                                            encoding=self.cfg.adversarial_input).to(self.device)

    # --- state: nothing in it belongs to one rank, so a run resumes on any number of them ---
    def _state(self) -> dict[str, Any]:
        state = {
            "step": self.step,
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "torch_rng": torch.get_rng_state(),
            "cuda_rng": torch.cuda.get_rng_state(self.device) if self.device.type == "cuda" else [],
            "epoch_loss": list(self.epoch_loss),
            "elapsed": self.elapsed,
            "config": config_json(self.cfg),
            "world_size": self.world.size,  # for the record only
        }
        if self.scaler is not None:
            state["scaler"] = self.scaler.state_dict()
        if self.adversary is not None:
            state["adversary"] = self.adversary.state_dict()
        if self.average is not None:
            state["average"] = self.average.state_dict()
        return state

    def _save(self) -> None:
        if not self.world.is_main:
            return
        os.makedirs(self.cfg.out, exist_ok=True)
        write_atomic(self.state_path, lambda tmp: torch.save(self._state(), tmp))
        save_checkpoint(self.trained_model, self.model_path, step=self.step, total_iters=self.total)

    @property
    def trained_model(self) -> SegmentationModel:
        """The model a run hands out (saved, evaluated, shared): the weight average with
        --ema-decay, else the trained model itself."""
        return self.average.model if self.average is not None else self.model

    def _load_state(self) -> None:
        try:
            state = torch.load(self.state_path, map_location=self.device, weights_only=True)
        except Exception as err:  # a damaged file: say which and why, in one line
            raise UserError(f"--resume: cannot read {self.state_path}: {str(err).splitlines()[0]}") from err
        # an option newer than the saved run was, for that run, at its default
        saved = {**config_json(TrainConfig()), **state["config"]}
        current = config_json(self.cfg)
        for key in current:
            if key not in RESUME_MAY_CHANGE and saved.get(key) != current.get(key):
                raise UserError(
                    f"--resume: {self.cfg.out} was trained with {key}={saved.get(key)!r}, not {current.get(key)!r}"
                )
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        torch.set_rng_state(state["torch_rng"].cpu())
        _restore_cuda_rng(state.get("cuda_rng"), self.device)
        if self.scaler is not None and "scaler" in state:
            self.scaler.load_state_dict(state["scaler"])
        self.step = int(state["step"])
        self.epoch_loss = list(state["epoch_loss"])
        self.elapsed = float(state["elapsed"])
        if self.adversary is not None and "adversary" in state:
            self.adversary.load_state_dict(state["adversary"])
        if self.average is not None:
            self.average.load_state_dict(state["average"])
        if self.step >= self.total:
            raise UserError(f"--resume: {self.cfg.out} already finished {self.step} of {self.total} iterations")
        if self.world.is_main:
            self._truncate_log()

    def _truncate_log(self) -> None:
        """Drop log lines written after the restored checkpoint (a crash between the two)."""
        if not os.path.isfile(self.log_path):
            return
        with open(self.log_path) as handle:
            records = [json.loads(line) for line in handle if line.strip()]
        kept = [r for r in records if r.get("step", 0) <= self.step]
        if len(kept) != len(records):
            write_text_atomic(self.log_path, "".join(json.dumps(r) + "\n" for r in kept))

    # --- loop ----------------------------------------------------------------------------
    def _loader(self) -> torch.utils.data.DataLoader:
        """This rank's micro-batches, from the current step to the end, one per item."""
        cfg = self.cfg
        transform = train_transform(cfg.crop_size, scale=(cfg.scale_min, cfg.scale_max), flip=cfg.flip,
                                    jitter=cfg.jitter, elastic=cfg.elastic, mean=cfg.mean, std=cfg.std)
        stream = TrainStream(self.items, transform, cfg.seed)
        self.sampler = GlobalBatchSampler(self.step, self.total, cfg.batch_size, self.world, cfg.grad_accum)
        # a private generator: the loader must not draw from the global RNG (dropout's), or a
        # resumed run would differ from a straight one
        return torch.utils.data.DataLoader(stream, batch_size=self.rows, sampler=self.sampler,
                                           num_workers=cfg.workers, pin_memory=self.device.type == "cuda",
                                           generator=torch.Generator().manual_seed(cfg.seed))

    def steps(self) -> Iterator[list[tuple[torch.Tensor, torch.Tensor]]]:
        """This rank's data of each step: `grad_accum` micro-batches of (images, masks)."""
        micro_batches: list[tuple[torch.Tensor, torch.Tensor]] = []
        for batch in self._loader():
            micro_batches.append(batch)
            if len(micro_batches) == self.cfg.grad_accum:
                yield micro_batches
                micro_batches = []

    def _log(self, record: dict[str, Any]) -> None:
        if not self.world.is_main:
            return
        os.makedirs(self.cfg.out, exist_ok=True)
        with open(self.log_path, "a") as handle:
            handle.write(json.dumps(record) + "\n")

    def _batch_totals(self, masks: list[torch.Tensor]) -> BatchTotals:
        """The global batch's normalisers: one all-reduce before the forward passes."""
        local = sum(labelled_weight(m, self.class_weights, self.info.ignore_index) for m in masks)
        weight = distributed.all_reduce_sum(local.reshape(1).clone()).item()
        return BatchTotals(weight, self.cfg.batch_size, self.world.size, self.cfg.grad_accum)

    def _train_step(self, micro_batches: list[tuple[torch.Tensor, torch.Tensor]], lr: float) -> dict[str, float]:
        """One optimiser step on this rank's micro-batches of the global batch."""
        for group in self.optimizer.param_groups:
            group["lr"] = lr * group.get("lr_mult", 1.0)
        micro_batches = [self._to_device(images, masks) for images, masks in micro_batches]
        totals = self._batch_totals([labels_at_stride(masks, self.cfg.loss_stride) for _, masks in micro_batches])
        # Luc et al.'s second phase (--adversarial-pretrain): the trained segmenter held fixed
        # (eval mode, no step) while the discriminator learns against it
        pretraining = self.adversary is not None and self.step < self.cfg.adversarial_pretrain
        self.model.train(not pretraining)
        for module in self.frozen_norms:  # --freeze backbone / --freeze-bn: statistics stay as loaded
            module.eval()
        self.optimizer.zero_grad(set_to_none=True)
        step_rng = _rng_state(self.device) if len(micro_batches) > 1 else None
        shares: dict[str, torch.Tensor] = {}
        for micro, (images, masks) in enumerate(micro_batches):
            if micro:  # each micro-batch draws its dropout rows from the step's RNG state
                _set_rng_state(step_rng, self.device)
            last = micro == len(micro_batches) - 1
            sync = contextlib.nullcontext() if last or self.ddp is None else self.ddp.no_sync()
            with sync, global_rows(self.model, self.sampler.first_row(micro), self.cfg.batch_size):
                parts = self._forward_backward(images, masks, totals)
            for key, value in parts.items():
                shares[key] = shares[key] + value if key in shares else value
        if pretraining:
            self.optimizer.zero_grad(set_to_none=True)  # the segmenter's gradient is not applied
        elif self.scaler is not None:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()
        if self.average is not None and not pretraining:
            self.average.update(self.model, self.step + 1)
        if self.adversary is not None:  # after the segmenter, as in Luc et al.: D saw the logits before its update
            distributed.all_reduce_gradients(self.adversary.discriminator.parameters())
            self.adversary.optimizer.step()
            self.adversary.optimizer.zero_grad(set_to_none=True)
        parts = _summed_over_ranks(shares)
        if not math.isfinite(parts["loss"]):
            raise UserError(f"training diverged at iteration {self.step + 1} (loss {parts['loss']}); lower --lr")
        return parts

    def _to_device(self, images: torch.Tensor, masks: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        images, masks = images.to(self.device, non_blocking=True), masks.to(self.device, non_blocking=True)
        if self.cfg.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        return images, masks

    def _forward_backward(self, images: torch.Tensor, masks: torch.Tensor, totals: BatchTotals) -> dict[str, torch.Tensor]:
        """Forward and backward of one micro-batch; returns its (detached) shares of the losses."""
        with autocast(self.device, self.precision):
            outputs = self.net(images, return_aux=True)
        scored, labels = at_loss_stride(outputs, masks, self.cfg.loss_stride)
        loss, parts = total_loss(self.loss, scored, labels, self.model.aux_weights, totals)
        if self.adversary is not None:  # Luc et al. 2016: lambda * adversarial term, then a D step
            adv = self.adversary.segmenter_loss(images, outputs["out"].float(), total=self.cfg.batch_size)
            parts["adv_g"] = adv.detach()
            loss = loss + adv
        (loss if self.scaler is None else self.scaler.scale(loss)).backward()
        if self.adversary is not None:  # D's gradient, accumulated until the step's end
            d_loss = self.adversary.discriminator_loss(images, outputs["out"].float(), masks,
                                                       ignore_index=self.info.ignore_index, total=self.cfg.batch_size)
            d_loss.backward()
            parts["adv_d"] = d_loss.detach()
        parts["loss"] = loss.detach()
        return parts

    def run(self) -> dict[str, Any]:
        cfg = self.cfg
        if self.world.is_main:
            os.makedirs(cfg.out, exist_ok=True)
            write_text_atomic(os.path.join(cfg.out, "config.json"), json.dumps(config_json(cfg), indent=2))
        end = self.total if cfg.stop_after is None else min(self.total, self.step + cfg.stop_after)
        steps_per_epoch = max(1, math.ceil(len(self.items) / cfg.batch_size))
        bar = tqdm(total=end, initial=self.step, desc=f"train {cfg.model}", disable=not (cfg.progress and self.world.is_main),
                   dynamic_ncols=True, unit="it")
        started = time.perf_counter() - self.elapsed
        try:
            for micro_batches in self.steps():
                lr = poly_lr(cfg.base_lr, self.step, self.total, cfg.poly_power, cfg.warmup_iters)
                parts = self._train_step(micro_batches, lr)
                self.step += 1
                self.elapsed = time.perf_counter() - started
                self.epoch_loss[0] += parts["loss"]
                self.epoch_loss[1] += 1
                bar.update(1)
                bar.set_postfix(loss=f"{parts['loss']:.3f}", lr=f"{lr:.2e}")
                if self.step % steps_per_epoch == 0:
                    self._end_epoch(self.step // steps_per_epoch, lr)
                if self.step % cfg.checkpoint_every == 0 or self.step >= end:
                    self._save()
                if cfg.eval_every and self.step % cfg.eval_every == 0 and self.step < self.total:
                    started += self._evaluate_now()  # the training clock does not count evaluation
                if self.step >= end:
                    break
        except RuntimeError as err:
            if "stack expects each tensor to be equal size" in str(err):
                raise UserError("training images differ in size; pass --crop-size") from err
            raise
        except ValueError as err:
            if "Expected more than 1 value per channel" in str(err):
                raise UserError(f"--batch-size {cfg.batch_size}: batch norm needs at least 2 images per "
                                "micro-batch and process (--batch-size / --grad-accum / processes)") from err
            raise
        finally:
            bar.close()
        finished = self.step >= self.total
        self._log({"event": "finished" if finished else "stopped", "step": self.step, "elapsed_s": round(self.elapsed, 2)})
        summary = {"iters": self.step, "total_iters": self.total, "seconds": round(self.elapsed, 2),
                   "finished": finished, "processes": self.world.size,
                   "precision": self.precision}
        return summary

    def _evaluate_now(self) -> float:
        """Evaluate on the eval split, log {"step", "val_mIoU", ...}; returns the seconds taken."""
        if self.eval_dataset is None or not len(self.eval_dataset):
            return 0.0
        from atrous.inference.evaluate import evaluate

        began = time.perf_counter()
        metrics = evaluate(self.trained_model, self.eval_dataset, batch_size=self.cfg.eval_batch_size,
                           precision=self.cfg.precision, progress=False)
        self.log_eval(metrics)
        return time.perf_counter() - began

    def log_eval(self, metrics: dict[str, Any]) -> None:
        split = self.cfg.eval_split
        self._log({"step": self.step, f"{split}_mIoU": round(metrics["mIoU"], 5),
                   f"{split}_pixel_accuracy": round(metrics["pixel_accuracy"], 5),
                   "elapsed_s": round(self.elapsed, 2)})

    def _end_epoch(self, epoch: int, lr: float) -> None:
        total, count = self.epoch_loss
        self._log({"epoch": epoch, "step": self.step, "loss": round(total / max(count, 1), 5), "lr": lr,
                   "elapsed_s": round(self.elapsed, 2)})
        self.epoch_loss = [0.0, 0]


def _summed_over_ranks(shares: dict[str, torch.Tensor]) -> dict[str, float]:
    """Each loss's value on the global batch: the ranks' shares added up (one all-reduce)."""
    keys = sorted(shares)
    values = distributed.all_reduce_sum(torch.stack([shares[k].double() for k in keys]))
    return dict(zip(keys, values.tolist(), strict=True))


def _rng_state(device: torch.device) -> tuple[torch.Tensor, torch.Tensor | None]:
    return torch.get_rng_state(), torch.cuda.get_rng_state(device) if device.type == "cuda" else None


def _set_rng_state(state: tuple[torch.Tensor, torch.Tensor | None], device: torch.device) -> None:
    torch.set_rng_state(state[0])
    if state[1] is not None:
        torch.cuda.set_rng_state(state[1], device)


def _restore_cuda_rng(saved: Any, device: torch.device) -> None:
    """The saved CUDA generator state onto this rank's GPU (every rank draws the same
    dropout masks); states saved before distributed training held one per visible GPU."""
    if device.type != "cuda" or saved is None or len(saved) == 0:
        return
    if isinstance(saved, list | tuple):
        saved = saved[min(device.index or 0, len(saved) - 1)]
    torch.cuda.set_rng_state(saved.cpu(), device)


def _eval_dataset(cfg: TrainConfig) -> torch.utils.data.Dataset | None:
    """The split evaluated after training; None when not asked for, or when a folder or
    CamVid dataset has no such split (an unknown synthetic split is an error)."""
    if not cfg.eval_split:
        return None
    try:
        return build_dataset(cfg.dataset, cfg.eval_split, data_root=cfg.data_root, num_classes=cfg.num_classes,
                             synthetic_size=cfg.synthetic_size, synthetic_length=cfg.synthetic_length)
    except DataError:
        if cfg.dataset == "synthetic":
            raise
        return None


def train(cfg: TrainConfig) -> dict[str, Any]:
    """Train, then evaluate on `cfg.eval_split` (when the dataset has it) and write
    metrics.json. Returns {"train": summary, "val": metrics or None}. Under torchrun the
    processes share the run (see the module's docstring); every rank returns the same."""
    cfg.validate()
    if cfg.save_pretrained:
        check_pretrained_out(cfg.save_pretrained, "--save-pretrained")
    with distributed.process_group(resolve_device(cfg.device), cfg.dist_timeout) as world:
        trainer = Trainer(cfg)
        dataset = _eval_dataset(cfg)  # before training, so that a bad split fails at once
        trainer.eval_dataset = dataset
        summary = trainer.run()
        result: dict[str, Any] = {"train": summary, cfg.eval_split or "val": None}
        if trainer.init_report is not None:
            result["init_from"] = trainer.init_report.as_dict()
        if summary["finished"] and dataset is not None:
            from atrous.inference.evaluate import evaluate

            if len(dataset):
                result[cfg.eval_split] = evaluate(trainer.trained_model, dataset, batch_size=cfg.eval_batch_size,
                                                  precision=cfg.precision, progress=cfg.progress)
                if cfg.eval_every:  # the last point of the validation curve
                    trainer.log_eval(result[cfg.eval_split])
        if world.is_main:
            write_json_atomic(os.path.join(cfg.out, "metrics.json"), result)
            if cfg.save_pretrained and summary["finished"]:
                save_run(trainer.trained_model, cfg.save_pretrained, config_json(cfg), result)
                print(f"wrote {cfg.save_pretrained} (a pretrained folder: atrous.from_pretrained reads it)")
    return result
