"""The parts of a training run built from its configuration: the model (with --init-from,
fine-tuning controls, sync batch norm), the optimiser, the sample stream, class weights,
bootstrapped images, the run's length and the evaluated split. The trainer
(atrous.training.trainer) puts them together."""

from __future__ import annotations

import math

import numpy as np
import torch

from atrous.checkpoints.meta import model_meta
from atrous.checkpoints.weights import LoadReport, load_weights
from atrous.data import DataError, build_dataset
from atrous.data.weights import class_weights
from atrous.errors import UserError
from atrous.models import SegmentationModel, create_model
from atrous.training.bootstrap import WithDuplicates, class_indices, hard_images
from atrous.training.config import DEFAULT_ITERS, TrainConfig
from atrous.training.finetune import (
    freeze_backbone,
    frozen_batch_norms,
    parameter_groups,
    unknown_prefixes,
)
from atrous.training.global_batch import convert_sync_batchnorm, shard_dropout


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


def training_dataset(cfg: TrainConfig) -> torch.utils.data.Dataset:
    dataset = build_dataset(cfg.dataset, cfg.train_split, data_root=cfg.data_root, num_classes=cfg.num_classes,
                            synthetic_size=cfg.synthetic_size, synthetic_length=cfg.synthetic_length)
    if len(dataset) == 0:
        raise UserError(f"the {cfg.dataset} training split is empty")
    return dataset


def eval_dataset(cfg: TrainConfig) -> torch.utils.data.Dataset | None:
    """The split evaluated during and after training; None when not asked for, or when a
    folder or CamVid dataset has no such split (an unknown synthetic split is an error)."""
    if not cfg.eval_split:
        return None
    try:
        return build_dataset(cfg.dataset, cfg.eval_split, data_root=cfg.data_root, num_classes=cfg.num_classes,
                             synthetic_size=cfg.synthetic_size, synthetic_length=cfg.synthetic_length)
    except DataError:
        if cfg.dataset == "synthetic":
            raise
        return None


def build_model(cfg: TrainConfig, info, device: torch.device, distributed: bool,
                init: bool) -> tuple[SegmentationModel, LoadReport | None]:
    """The model on `device`, its weights from --init-from when `init` (not when resuming)."""
    try:
        model = create_model(cfg.model, info.num_classes, backbone=cfg.backbone, output_stride=cfg.output_stride,
                             pretrained_backbone=cfg.pretrained_backbone, **cfg.model_options)
    except FileNotFoundError as err:
        raise UserError(str(err)) from err
    except (ValueError, TypeError) as err:
        raise UserError(f"--model {cfg.model}: {err}") from err
    report = load_weights(model, cfg.init_from) if cfg.init_from and init else None
    model.meta = model_meta(info, cfg.mean, cfg.std)
    shard_dropout(model)  # dropout masks that do not depend on the number of ranks
    if distributed and cfg.sync_bn is not False:
        model = convert_sync_batchnorm(model, device)
    model.to(device)
    if cfg.channels_last:
        model.to(memory_format=torch.channels_last)
    return model, report


def fine_tuning(model: SegmentationModel, cfg: TrainConfig) -> list[torch.nn.Module]:
    """--freeze backbone and --lr-mult applied to the model; returns the batch norms that
    stay in eval mode while training (--freeze backbone: the backbone's; --freeze-bn: all)."""
    unknown = list(unknown_prefixes(model, cfg.lr_mult))
    if unknown:
        raise UserError(f"--lr-mult {unknown[0]}: not backbone, head or a parameter-name prefix of model {cfg.model}")
    if cfg.freeze == "backbone":
        try:
            freeze_backbone(model)
        except ValueError as err:
            raise UserError(f"--freeze backbone: {err}") from err
    if cfg.freeze_bn or cfg.freeze == "backbone":
        return frozen_batch_norms(model, backbone_only=not cfg.freeze_bn)
    return []


def build_optimizer(model: torch.nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    """The optimiser over the trainable parameters, one group per learning-rate multiplier
    (each group's lr is base * its "lr_mult" at every step)."""
    fused = True if cfg.fused_optimizer else None  # None: torch's default implementation
    groups = parameter_groups(model, cfg.lr_mult)
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=cfg.base_lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay,
                               fused=fused)
    return torch.optim.AdamW(groups, lr=cfg.base_lr, weight_decay=cfg.weight_decay, fused=fused)


def total_iters(cfg: TrainConfig, dataset_length: int) -> int:
    if cfg.iters is not None:
        return cfg.iters
    if cfg.epochs is not None:
        return max(1, math.ceil(cfg.epochs * dataset_length / cfg.batch_size))
    return DEFAULT_ITERS


def loss_class_weights(cfg: TrainConfig, dataset, info, device: torch.device) -> torch.Tensor | None:
    if cfg.class_weights == "none":
        return None
    if not hasattr(dataset, "labels"):
        raise UserError(f"--class-weights {cfg.class_weights} needs mask files; dataset {cfg.dataset} has none")
    weights = class_weights(cfg.class_weights, dataset.labels(), info.num_classes, void=info.ignore_index)
    return weights.to(device)


def bootstrapped(cfg: TrainConfig, dataset, info, verbose: bool) -> torch.utils.data.Dataset:
    """The dataset with the images holding a --bootstrap-class duplicated."""
    if not cfg.bootstrap_class:
        return dataset
    hard = hard_images(dataset, class_indices(cfg.bootstrap_class, info.class_names))
    if verbose:
        print(f"bootstrapping: {len(hard)} of {len(dataset)} training images duplicated "
              f"{cfg.bootstrap_copies}x ({', '.join(cfg.bootstrap_class)})")
    return WithDuplicates(dataset, hard, cfg.bootstrap_copies)
