"""Training: iteration-based, DeepLab's poly schedule, exact resume, atomic checkpoints, and
training features that plug in (atrous.training.hooks).

Writes into `out`:
- model.safetensors  the model (atrous.load_checkpoint rebuilds it)
- train_state.pt     weights, optimiser, step, RNG and each feature's state, for --resume
                     (atrous.training.state)
- log.jsonl          one JSON line per epoch and evaluation (and one when a run stops)
- metrics.json       evaluation on the validation split and a training summary
- config.json        the resolved training configuration
and, with features, their files (best.safetensors for --save-best); with save_pretrained, a
folder to share (atrous.training.share).

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
import dataclasses
import functools
import json
import math
import os
import signal
import time
from collections.abc import Iterator
from typing import Any

import torch

from atrous.checkpoints.checkpoint import load_checkpoint, save_checkpoint
from atrous.data import train_transform
from atrous.errors import UserError
from atrous.losses import BatchTotals, build_loss, labelled_weight, total_loss
from atrous.models import SegmentationModel
from atrous.outputs import require_writable_folder, write_json_atomic, write_text_atomic
from atrous.runtime import distributed
from atrous.runtime.device import autocast, resolve_device, resolve_precision
from atrous.runtime.progress import Progress, progress_bar
from atrous.training import parts, state
from atrous.training.best import SUMMARY_METRICS
from atrous.training.config import RESUME_MAY_CHANGE, TrainConfig, config_json
from atrous.training.deterministic import init_worker, nondeterministic_error
from atrous.training.global_batch import GlobalBatchSampler, global_rows, micro_batch_size
from atrous.training.hooks import build_features
from atrous.training.preemption import exit_code, stopped_by
from atrous.training.schedule import at_loss_stride, labels_at_stride, poly_lr
from atrous.training.share import check_pretrained_out, save_run

__all__ = ["Trainer", "TrainConfig", "labels_at_stride", "poly_lr", "train"]


class Trainer:
    def __init__(self, cfg: TrainConfig) -> None:
        cfg.validate()
        self.world = distributed.current_world()
        self.auto = cfg.resume == "auto"  # --resume auto: a new run where no state exists
        self.cfg = _resolved_resume(cfg)
        cfg = self.cfg
        self.device = distributed.rank_device(resolve_device(cfg.device))
        self.rows = micro_batch_size(cfg.batch_size, self.world.size, cfg.grad_accum)  # per rank and micro-batch
        self.model_path = os.path.join(cfg.out, "model.safetensors")
        self.state_path = os.path.join(cfg.out, state.STATE_FILE)
        self.log_path = os.path.join(cfg.out, "log.jsonl")
        self._check_out_dir()
        torch.manual_seed(cfg.seed)
        self.dataset = parts.training_dataset(cfg)
        self.info = self.dataset.info
        self.bands = parts.input_bands(cfg, self.dataset)
        self.model, self.init_report = parts.build_model(cfg, self.info, self.device, self.world.distributed,
                                                         init=not cfg.resume, bands=self.bands)
        if self.init_report is not None and self.world.is_main:
            print(self.init_report.line())
        self.extra_heads = parts.extra_heads(self.model, cfg)  # e.g. SIFT Flow's geometric head
        self.head_totals: list[BatchTotals] = []  # the step's normalisers of each extra head
        self.frozen_norms = parts.fine_tuning(self.model, cfg)
        self.optimizer = parts.build_optimizer(self.model, cfg)
        self.precision = resolve_precision(cfg.precision, self.device)  # "auto" -> what runs here
        self.scaler = torch.amp.GradScaler(self.device.type) if self.precision == "fp16" else None
        self.items = parts.bootstrapped(cfg, self.dataset, self.info, self.world.is_main)
        self.total = parts.total_iters(cfg, len(self.items))
        self.class_weights = parts.loss_class_weights(cfg, self.dataset, self.info, self.device)
        self.loss = build_loss(cfg.loss, ignore_index=self.info.ignore_index, class_weights=self.class_weights,
                               reduce=distributed.all_reduce_sum, task=cfg.task, **cfg.loss_settings())
        self.step, self.elapsed, self.finished = 0, 0.0, False
        self.epoch_loss = [0.0, 0]  # running sum and count for the epoch's log line
        self.model_learns, self.lr = True, 0.0
        self.stop: tuple[str, bool, int] | None = None  # (reason, finished, exit code) once requested
        self.eval_dataset: torch.utils.data.Dataset | None = None  # set by train() for evaluations
        self.final_metrics: dict[str, Any] | None = None  # the evaluation after the last step
        self.features = build_features(cfg, self)
        if cfg.resume:
            self._load_state()
        self.ddp = self._data_parallel()
        self.net = torch.compile(self.ddp or self.model) if cfg.compile else (self.ddp or self.model)

    def _check_out_dir(self) -> None:
        cfg = self.cfg
        if self.world.is_main:  # rank 0 alone writes the run's files (and makes the folder)
            require_writable_folder(cfg.out, "out", keep=True)
        elif os.path.exists(cfg.out) and not os.path.isdir(cfg.out):
            raise UserError(f"out {cfg.out} exists and is not a folder", argument="out")
        if cfg.resume:
            if not os.path.isfile(self.state_path):
                raise UserError(f"resume: no training state in {cfg.out} (expected {self.state_path})", argument="resume")
        elif os.path.exists(self.model_path) and not cfg.overwrite:
            raise UserError(
                f"{self.model_path} already exists; give resume to continue it, overwrite to replace it, "
                "or choose another out", argument=("resume", "overwrite", "out")
            )
        elif (cfg.overwrite or self.auto) and self.world.is_main:  # an old run's files must not mix in
            for stale in (self.state_path, self.log_path, os.path.join(cfg.out, "metrics.json")):
                if os.path.exists(stale):
                    os.remove(stale)

    def _data_parallel(self) -> torch.nn.parallel.DistributedDataParallel | None:
        """DDP over the ranks, gradients summed (each rank's loss is its share of the global loss)."""
        if not self.world.distributed:
            return None
        device_ids = [self.device.index] if self.device.type == "cuda" else None
        ddp = torch.nn.parallel.DistributedDataParallel(self.model, device_ids=device_ids)
        ddp.register_comm_hook(None, distributed.sum_gradients_hook)
        return ddp

    # --- what features see and ask for -------------------------------------------------------
    @property
    def trained_model(self) -> SegmentationModel:
        """The model a run hands out (saved, evaluated, shared): a feature's (the weight
        average of --ema-decay), else the trained model itself."""
        for feature in self.features:
            model = feature.model_to_save()
            if model is not None:
                return model
        return self.model

    def request_stop(self, reason: str, *, finished: bool, exit_code: int = 0) -> None:
        if self.stop is None:
            self.stop = (reason, finished, exit_code)

    def config_record(self) -> dict[str, Any]:
        return config_json(self.cfg)

    # --- state -----------------------------------------------------------------------------
    def _save(self) -> None:
        if not self.world.is_main:
            return
        os.makedirs(self.cfg.out, exist_ok=True)
        state.save(self.state_path, state.capture(self))
        save_checkpoint(self.trained_model, self.model_path, step=self.step, total_iters=self.total)

    def _load_state(self) -> None:
        saved_state = state.read(self.state_path, self.device)
        # an option newer than the saved run was, for that run, at its default
        saved = {**config_json(TrainConfig()), **saved_state["config"]}
        state.check_same_recipe(saved, config_json(self.cfg), RESUME_MAY_CHANGE, self.cfg.out)
        state.restore(self, saved_state)
        if self.step >= self.total or self.finished:
            raise UserError(f"resume: {self.cfg.out} already finished {self.step} of {self.total} iterations",
                            argument="resume")
        if self.world.is_main:
            state.truncate_log(self.log_path, self.step)

    # --- loop ----------------------------------------------------------------------------
    def _loader(self) -> torch.utils.data.DataLoader:
        """This rank's micro-batches, from the current step to the end, one per item."""
        cfg = self.cfg
        transform = train_transform(cfg.crop_size, scale=(cfg.scale_min, cfg.scale_max), flip=cfg.flip,
                                    jitter=cfg.jitter, elastic=cfg.elastic, mean=self.bands.mean,
                                    std=self.bands.std)
        stream = parts.TrainStream(self.items, transform, cfg.seed)
        self.sampler = GlobalBatchSampler(self.step, self.total, cfg.batch_size, self.world, cfg.grad_accum)
        # a private generator: the loader must not draw from the global RNG (dropout's), or a
        # resumed run would differ from a straight one; workers seeded from (seed, rank, worker)
        init = functools.partial(init_worker, seed=cfg.seed, rank=self.world.rank) if cfg.workers else None
        return torch.utils.data.DataLoader(stream, batch_size=self.rows, sampler=self.sampler,
                                           num_workers=cfg.workers, pin_memory=self.device.type == "cuda",
                                           generator=torch.Generator().manual_seed(cfg.seed), worker_init_fn=init)

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

    def _batch_totals(self, masks: list[torch.Tensor], class_weights: torch.Tensor | None = None) -> BatchTotals:
        """The global batch's normalisers: one all-reduce before the forward passes."""
        local = sum(labelled_weight(m, class_weights, self.info.ignore_index) for m in masks)
        weight = distributed.all_reduce_sum(local.reshape(1).clone()).item()
        return BatchTotals(weight, self.cfg.batch_size, self.world.size, self.cfg.grad_accum)

    def _train_step(self, micro_batches: list[tuple[torch.Tensor, torch.Tensor]], lr: float) -> dict[str, float]:
        """One optimiser step on this rank's micro-batches of the global batch; returns the
        global batch's losses."""
        self.lr = lr
        for group in self.optimizer.param_groups:
            group["lr"] = lr * group.get("lr_mult", 1.0)
        micro_batches = [self._to_device(images, masks) for images, masks in micro_batches]
        for _, masks in micro_batches if self.extra_heads else ():
            parts.check_head_planes(masks, self.extra_heads, self.cfg.dataset)
        main = [masks[:, 0] if self.extra_heads else masks for _, masks in micro_batches]
        totals = self._batch_totals([labels_at_stride(m, self.cfg.loss_stride) for m in main], self.class_weights)
        self.head_totals = [self._batch_totals([masks[:, 1 + i] for _, masks in micro_batches])
                            for i in range(len(self.extra_heads))]  # each extra head: its own labelled pixels
        self.model_learns = all(feature.trains_model(self) for feature in self.features)
        self.model.train(self.model_learns)  # a segmenter held fixed runs in eval mode
        for module in self.frozen_norms:  # --freeze backbone / --freeze-bn: statistics stay as loaded
            module.eval()
        self.optimizer.zero_grad(set_to_none=True)
        step_rng = state.rng_state(self.device) if len(micro_batches) > 1 else None
        shares: dict[str, torch.Tensor] = {}
        for micro, (images, masks) in enumerate(micro_batches):
            if micro:  # each micro-batch draws its dropout rows from the step's RNG state
                state.set_rng_state(step_rng, self.device)
            last = micro == len(micro_batches) - 1
            sync = contextlib.nullcontext() if last or self.ddp is None else self.ddp.no_sync()
            with sync, global_rows(self.model, self.sampler.first_row(micro), self.cfg.batch_size):
                for key, value in self._forward_backward(images, masks, totals).items():
                    shares[key] = shares[key] + value if key in shares else value
        self._optimizer_step()
        losses = _summed_over_ranks(shares)
        if not math.isfinite(losses["loss"]):
            raise UserError(f"training diverged at iteration {self.step + 1} (loss {losses['loss']}); lower lr", argument="lr")
        return losses

    def _optimizer_step(self) -> None:
        if not self.model_learns:
            self.optimizer.zero_grad(set_to_none=True)  # the segmenter's gradient is not applied
            return
        for feature in self.features:  # every micro-batch's (and rank's) gradient is in: e.g. clipping
            feature.before_optimizer_step(self)
        if self.scaler is not None:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()

    def _to_device(self, images: torch.Tensor, masks: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        images, masks = images.to(self.device, non_blocking=True), masks.to(self.device, non_blocking=True)
        if self.cfg.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        return images, masks

    def _forward_backward(self, images: torch.Tensor, masks: torch.Tensor, totals: BatchTotals) -> dict[str, torch.Tensor]:
        """Forward and backward of one micro-batch; returns its (detached) shares of the losses."""
        with autocast(self.device, self.precision):
            outputs = self.net(images, return_aux=True)
        planes, masks = (masks[:, 1:], masks[:, 0]) if self.extra_heads else (None, masks)
        scored, labels = at_loss_stride(outputs, masks, self.cfg.loss_stride)
        loss, shares = total_loss(self.loss, scored, labels, self.model.aux_weights, totals)
        for plane, head in enumerate(self.extra_heads):  # FCN's SIFT Flow net: each head against its labels
            share = self.loss(outputs[head], planes[:, plane], self.head_totals[plane])
            shares[head], loss = share.detach(), loss + share
        for feature in self.features:  # e.g. Luc et al.'s adversarial term
            for key, term in feature.loss_terms(self, images, outputs, masks).items():
                shares[key] = term.detach()
                loss = loss + term
        (loss if self.scaler is None else self.scaler.scale(loss)).backward()
        for feature in self.features:  # e.g. the discriminator's own loss and backward
            shares.update(feature.after_backward(self, images, outputs, masks))
        shares["loss"] = loss.detach()
        return shares

    def run(self) -> dict[str, Any]:
        cfg = self.cfg
        if self.world.is_main:
            os.makedirs(cfg.out, exist_ok=True)
            write_text_atomic(os.path.join(cfg.out, "config.json"), json.dumps(config_json(cfg), indent=2))
        end = self.total if cfg.stop_after is None else min(self.total, self.step + cfg.stop_after)
        bar = progress_bar(total=end, initial=self.step, desc=f"train {cfg.model}", unit="it",
                           disable=not (cfg.progress and self.world.is_main))
        self._started = time.perf_counter() - self.elapsed
        summary: dict[str, Any] = {}
        try:
            for feature in self.features:
                feature.on_start(self)
            with _readable_errors(cfg), self._loader_ended_by_signal():
                for micro_batches in self.steps():
                    lr = poly_lr(cfg.base_lr, self.step, self.total, cfg.poly_power, cfg.warmup_iters)
                    losses = self._train_step(micro_batches, lr)
                    self._after_step(losses, lr, end, bar)
                    if self.step >= end or self.stop is not None:
                        break
            bar.close()
            summary = self._summary()
            if summary["finished"]:
                self._final_evaluation()
        finally:
            bar.close()
            for feature in self.features:
                feature.on_end(self, summary)
        return summary

    @contextlib.contextmanager
    def _loader_ended_by_signal(self) -> Iterator[None]:
        """A data worker ended by the stop signal before the step in flight did (it outlives
        SIGTERM by atrous.training.preemption.WORKER_GRACE_S): the loader's failure, raised at
        any point of the step, is the stop the signal asked for; the state stays the last
        checkpoint's, as the step was cut anywhere."""
        try:
            yield
        except RuntimeError as err:
            signum = stopped_by(self.features)
            if signum is None or "DataLoader worker" not in str(err):
                raise
            self.request_stop(f"stopped by {signal.Signals(signum).name} (a data worker ended mid-step; the "
                              "state is the last checkpoint's)", finished=False, exit_code=exit_code(signum))

    def _final_evaluation(self) -> None:
        """The eval split scored with the model the run hands out (`final_metrics`), the last
        point of the validation curve and of the features' choices."""
        self.final_metrics = self._evaluate(progress=self.cfg.progress)
        if self.final_metrics is not None and self.eval_interval:
            self.after_evaluation(self.final_metrics)

    def _after_step(self, losses: dict[str, float], lr: float, end: int, bar: Progress) -> None:
        """The step's bookkeeping: features, the epoch's log line, evaluation, checkpoint."""
        self.step += 1
        self.elapsed = time.perf_counter() - self._started
        self.epoch_loss[0] += losses["loss"]
        self.epoch_loss[1] += 1
        bar.update(1)
        bar.set_postfix(loss=f"{losses['loss']:.3f}", lr=f"{lr:.2e}")
        for feature in self.features:
            feature.after_step(self, losses)
        steps_per_epoch = max(1, math.ceil(len(self.items) / self.cfg.batch_size))
        if self.step % steps_per_epoch == 0:
            self._end_epoch(self.step // steps_per_epoch, lr)
        every = self.eval_interval
        if every and self.step % every == 0 and self.step < self.total and self.stop is None:  # a signal: save first
            self._started += self._evaluate_now()  # the training clock does not count evaluation
        if self.stop is not None and self.stop[1]:
            self.finished = True
        if self.step % self.cfg.checkpoint_every == 0 or self.step >= end or self.stop is not None:
            self._save()

    @property
    def eval_interval(self) -> int | None:
        """--eval-every; with --save-best or --early-stop and no --eval-every, --checkpoint-every."""
        cfg = self.cfg
        if cfg.eval_every or (cfg.save_best is None and cfg.early_stop is None):
            return cfg.eval_every
        return cfg.checkpoint_every

    def _summary(self) -> dict[str, Any]:
        finished = self.step >= self.total or self.finished
        reason = self.stop[0] if self.stop else None
        self._log({"event": "finished" if finished else "stopped", "step": self.step,
                   "elapsed_s": round(self.elapsed, 2), **({"reason": reason} if reason else {})})
        summary = {"iters": self.step, "total_iters": self.total, "seconds": round(self.elapsed, 2),
                   "finished": finished, "processes": self.world.size, "precision": self.precision}
        if self.stop is not None:
            summary.update(stopped=reason, exit_code=self.stop[2])
        return summary

    def _evaluate_now(self) -> float:
        """Evaluate on the eval split, log it and hand it to the features; returns the seconds taken."""
        began = time.perf_counter()
        metrics = self._evaluate(progress=False)
        if metrics is not None:
            self.after_evaluation(metrics)
        return time.perf_counter() - began

    def _evaluate(self, progress: bool) -> dict[str, Any] | None:
        """The eval split scored with the model the run hands out; None without one."""
        if self.eval_dataset is None or not len(self.eval_dataset):
            return None
        from atrous.inference.evaluate import evaluate

        dataset = parts.MaskPlane(self.eval_dataset) if self.extra_heads else self.eval_dataset  # the main head
        return evaluate(self.trained_model, dataset, batch_size=self.cfg.eval_batch_size,
                        precision=self.cfg.precision, progress=progress)

    def after_evaluation(self, metrics: dict[str, Any]) -> None:
        self.log_eval(metrics)
        for feature in self.features:
            feature.after_evaluation(self, metrics)

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


@contextlib.contextmanager
def _readable_errors(cfg: TrainConfig) -> Iterator[None]:
    """Errors of torch's that a user fixes with an option, said as such."""
    try:
        yield
    except RuntimeError as err:
        if "stack expects each tensor to be equal size" in str(err):
            raise UserError("training images differ in size; give crop_size", argument="crop_size") from err
        deterministic = nondeterministic_error(err)  # --deterministic met an operation it cannot run
        if deterministic is not None:
            raise deterministic from err
        raise
    except ValueError as err:
        if "Expected more than 1 value per channel" in str(err):
            raise UserError(f"batch_size {cfg.batch_size}: batch norm needs at least 2 images per "
                            "micro-batch and process (batch size / grad_accum / processes)",
                            argument=("batch_size", "grad_accum")) from err
        raise


def _resolved_resume(cfg: TrainConfig) -> TrainConfig:
    """--resume auto as --resume where the run has a state, a new run where it has none."""
    if cfg.resume != "auto":
        return cfg
    mode = state.resume_mode(cfg.out, "auto")
    return dataclasses.replace(cfg, resume=mode != "fresh")


def _summed_over_ranks(shares: dict[str, torch.Tensor]) -> dict[str, float]:
    """Each loss's value on the global batch: the ranks' shares added up (one all-reduce)."""
    keys = sorted(shares)
    values = distributed.all_reduce_sum(torch.stack([shares[k].double() for k in keys]))
    return dict(zip(keys, values.tolist(), strict=True))


def _already_finished(cfg: TrainConfig) -> dict[str, Any]:
    """The result of `--resume auto` on a finished run: nothing done, what it wrote kept."""
    done = state.progress(cfg.out)
    return {"train": {"iters": done["step"], "total_iters": done["total_iters"], "finished": True,
                      "already_finished": True}, metrics_key(cfg.eval_split): None}


def metrics_key(split: str | None) -> str:
    """Where metrics.json (and `train`'s result) holds the final evaluation of `split`: under its
    name, except the train split's, "train_eval" ("train" holds the run's summary)."""
    split = split or "val"
    return "train_eval" if split == "train" else split


def train(cfg: TrainConfig) -> dict[str, Any]:
    """Train, then evaluate on `cfg.eval_split` (when the dataset has it) and write
    metrics.json. Returns {"train": summary, "val": metrics or None}. Under torchrun the
    processes share the run (see the module's docstring); every rank returns the same."""
    cfg.validate()
    if cfg.resume == "auto" and state.resume_mode(cfg.out, "auto") == "finished":
        return _already_finished(cfg)
    if cfg.save_pretrained:
        check_pretrained_out(cfg.save_pretrained, "save_pretrained")
    with distributed.process_group(resolve_device(cfg.device), cfg.dist_timeout) as world:
        trainer = Trainer(cfg)
        dataset = parts.eval_dataset(cfg)  # before training, so that a bad split fails at once
        trainer.eval_dataset = dataset
        summary = trainer.run()
        result: dict[str, Any] = {"train": summary, metrics_key(cfg.eval_split): None}
        if trainer.init_report is not None:
            result["init_from"] = trainer.init_report.as_dict()
        if trainer.final_metrics is not None:
            result[metrics_key(cfg.eval_split)] = trainer.final_metrics
        result.update(_feature_records(trainer))
        if world.is_main:
            write_json_atomic(os.path.join(cfg.out, "metrics.json"), result)
            if cfg.save_pretrained and summary["finished"]:
                model, metrics, notes = _shared(trainer, result)
                save_run(model, cfg.save_pretrained, config_json(cfg), metrics, notes)
                print(f"wrote {cfg.save_pretrained} (a pretrained folder: atrous.from_pretrained reads it)")
    return result


def _shared(trainer: Trainer, result: dict[str, Any]) -> tuple[SegmentationModel, dict[str, Any], str | None]:
    """What --save-pretrained shares: the model the run hands out with the final evaluation,
    or with --save-best the best model, its evaluation at the iteration it was chosen at and a
    note that says so."""
    best = result.get("best")
    if not best:
        return trainer.trained_model, result, None
    model = load_checkpoint(os.path.join(trainer.cfg.out, best["file"]))
    split = trainer.cfg.eval_split
    final = (result.get(metrics_key(split)) or {}).get(best["metric"]) if best["metric"] in SUMMARY_METRICS else None
    note = (f"The best of the run's evaluations on `{split}` by {best['metric']} ({best['value']:.4f}), chosen at "
            f"iteration {best['step']} of {trainer.total} (`--save-best`)"
            + (f"; the last model scored {final:.4f}." if final is not None else "."))
    return model, {split: best["metrics"]}, note


def _feature_records(trainer: Trainer) -> dict[str, Any]:
    """What features report in metrics.json, under their names (the best model's choice under "best")."""
    records = {feature.name: feature.record() for feature in trainer.features}
    return {name: record for name, record in records.items() if record is not None}
