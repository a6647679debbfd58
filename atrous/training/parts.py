"""The parts of a training run built from its configuration: the model (with --init-from,
fine-tuning controls, sync batch norm), the optimiser, the sample stream, class weights,
bootstrapped images, the run's length and the evaluated split. The trainer
(atrous.training.trainer) puts them together."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from atrous.checkpoints.meta import model_meta
from atrous.checkpoints.weights import LoadReport, load_weights
from atrous.data import IMAGENET_MEAN, IMAGENET_STD, DataError, build_dataset
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
                            synthetic_size=cfg.synthetic_size, synthetic_length=cfg.synthetic_length, task=cfg.task)
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
                             synthetic_size=cfg.synthetic_size, synthetic_length=cfg.synthetic_length, task=cfg.task)
    except DataError:
        if cfg.dataset == "synthetic":
            raise
        return None


@dataclass(frozen=True)
class Bands:
    """What the model takes: its band count and each band's normalisation."""

    in_channels: int
    mean: tuple[float, ...]
    std: tuple[float, ...]


def input_bands(cfg: TrainConfig, dataset: torch.utils.data.Dataset) -> Bands:
    """The band count and normalisation of a run, from its options and its first image: the
    given mean and std, else the dataset's own (its info's extra "mean"/"std", e.g. NYUDv2's
    RGB-D), else ImageNet's for 8-bit RGB photographs; other images need theirs."""
    image = first_readable_image(dataset)
    bands = image.shape[0]
    if cfg.in_channels is not None and cfg.in_channels != bands:
        raise UserError(f"in_channels is {cfg.in_channels}, but the images of {cfg.dataset} have {bands} bands",
                        argument="in_channels")
    if cfg.mean is not None and cfg.std is not None:
        if len(cfg.mean) != bands:
            raise UserError(f"mean and std give {len(cfg.mean)} values; the images of {cfg.dataset} have "
                            f"{bands} bands (one value per band)", argument=("mean", "std"))
        return Bands(bands, tuple(cfg.mean), tuple(cfg.std))
    declared = getattr(dataset, "info", None) and dataset.info.extra  # a dataset's own (NYUDv2's depth)
    if declared and "mean" in declared and "std" in declared and len(declared["mean"]) == bands:
        return Bands(bands, tuple(declared["mean"]), tuple(declared["std"]))
    if image.dtype == torch.uint8:
        return Bands(bands, IMAGENET_MEAN, IMAGENET_STD)
    raise UserError(f"the images of {cfg.dataset} are {bands}-band {str(image.dtype).removeprefix('torch.')} "
                    "values, which have no default normalisation: measure it (`atrous data stats`) and give "
                    "the mean and std it prints", argument=("mean", "std"))


class MaskPlane(torch.utils.data.Dataset):
    """A dataset whose masks stack one label plane per head, seen through one plane: (image,
    mask[plane]). The training run evaluates the main head ("out") on plane 0."""

    def __init__(self, dataset: torch.utils.data.Dataset, plane: int = 0) -> None:
        self.dataset, self.plane, self.info = dataset, plane, dataset.info

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        image, mask = self.dataset[index]
        return image, mask[self.plane]


def extra_heads(model: torch.nn.Module, cfg: TrainConfig) -> tuple[str, ...]:
    """The model's extra score heads (FCN's `extra_heads`), each trained with `cfg.loss` against
    its own label plane; refused where the run could not score them."""
    heads = tuple(getattr(model, "extra_heads", None) or ())
    if heads and (cfg.loss_stride != 1 or cfg.task != "multiclass" or cfg.class_weights != "none"):
        raise UserError(f"the extra heads {', '.join(heads)} train with loss_stride 1, the multiclass task and no "
                        "class weights", argument=("loss_stride", "task", "class_weights"))
    return heads


def check_head_planes(masks: torch.Tensor, heads: tuple[str, ...], dataset: str) -> None:
    """A model with extra score heads trains on masks of one plane per head (N, 1 + E, H, W)."""
    if masks.ndim != 4 or masks.shape[1] != 1 + len(heads):
        raise UserError(f"the model has the extra heads {', '.join(heads)}: its training masks need one label "
                        f"plane per head ({1 + len(heads)}, H, W), but dataset {dataset} gives "
                        f"{tuple(masks.shape[1:])} (SIFT Flow's two heads: dataset sift_flow_both)",
                        argument="dataset")


def first_readable_image(dataset: torch.utils.data.Dataset) -> torch.Tensor:
    """The first image that reads: a damaged one is reported when training reaches it, after
    the state of the steps before it is written (a resumable run), not before the run starts."""
    first_error: DataError | None = None
    for index in range(len(dataset)):
        try:
            return dataset[index][0]
        except DataError as err:
            first_error = first_error or err
    raise first_error if first_error is not None else UserError("the training split is empty")


def build_model(cfg: TrainConfig, info, device: torch.device, distributed: bool,
                init: bool, bands: Bands | None = None) -> tuple[SegmentationModel, LoadReport | None]:
    """The model on `device`, its weights from --init-from when `init` (not when resuming)."""
    bands = bands or Bands(3, IMAGENET_MEAN, IMAGENET_STD)
    try:
        model = create_model(cfg.model, info.num_classes, in_channels=bands.in_channels, backbone=cfg.backbone,
                             output_stride=cfg.output_stride, pretrained_backbone=cfg.pretrained_backbone,
                             **cfg.model_options)
    except FileNotFoundError as err:
        raise UserError(str(err)) from err
    except (ValueError, TypeError) as err:
        raise UserError(f"model {cfg.model}: {err}", argument="model") from err
    report = load_weights(model, cfg.init_from) if cfg.init_from and init else None
    model.meta = model_meta(info, bands.mean, bands.std, threshold=cfg.threshold)
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
        raise UserError(f"lr_mult {unknown[0]}: not backbone, head or a parameter-name prefix of model {cfg.model}",
                        argument="lr_mult")
    if cfg.freeze == "backbone":
        try:
            freeze_backbone(model)
        except ValueError as err:
            raise UserError(f"freeze backbone: {err}", argument="freeze") from err
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
        raise UserError(f"class_weights {cfg.class_weights} needs mask files; dataset {cfg.dataset} has none",
                        argument="class_weights")
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
