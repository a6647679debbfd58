"""Every training option, declared once: `atrous train`'s flags, the config-file keys and the
checks come from these fields (see atrous.options)."""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass
from typing import Any

from atrous.data import list_datasets
from atrous.data.options import (
    BandOptions,
    DatasetOptions,
    TaskOptions,
    ThresholdOptions,
    check_normalisation,
)
from atrous.data.weights import CLASS_WEIGHTINGS
from atrous.errors import UserError
from atrous.losses import (
    LEGACY_KEYWORDS,
    build_loss_options,
    list_losses,
    loss_tasks,
    weighted_losses,
)
from atrous.options import ProgressOptions, check_options, option
from atrous.runtime.device import PRECISIONS
from atrous.runtime.distributed import DEFAULT_TIMEOUT_S
from atrous.runtime.options import DeviceOptions

# the training features (atrous.training.hooks): each module registers its feature, and the
# options it declares are mixed into TrainConfig below
from atrous.training import preemption  # noqa: F401  (stopping on a signal: no options)
from atrous.training.adversarial import AdversarialOptions
from atrous.training.averaging import EmaOptions
from atrous.training.best import BestOptions
from atrous.training.clip_grad import ClipGradOptions
from atrous.training.deterministic import DeterministicOptions
from atrous.training.early_stop import EarlyStopOptions
from atrous.training.hooks import check_feature_options
from atrous.training.tracking import LogOptions

OPTIMIZERS = ("sgd", "adamw")
DEFAULT_ITERS = 1000
DEFAULT_LR = {"sgd": 0.01, "adamw": 1e-3}


@dataclass(kw_only=True)
class TrainOptions(EmaOptions, AdversarialOptions, BestOptions, EarlyStopOptions, LogOptions,
                   DatasetOptions, BandOptions, TaskOptions, ThresholdOptions, DeviceOptions, ProgressOptions,
                   DeterministicOptions, ClipGradOptions):
    """Every training option; the CLI flags and YAML config keys carry these names. The
    training features' options come from their own modules (the bases)."""

    # what is trained, on what, and where it goes
    model: str = option("deeplab_v3plus", "model name (see `atrous models`); required here or in --config",
                        show_default=False)
    dataset: str = option("synthetic", "the training dataset; required here or in --config", choices=list_datasets,
                          show_default=False)
    out: str = option("runs/train", "output folder; required here or in --config", show_default=False)
    backbone: str | None = option(None, "timm model name, or vgg16 / vgg16_bn")
    output_stride: int | None = option(None, "the backbone's output stride (default: the paper's for the model)",
                                       choices=(8, 16, 32))
    pretrained_backbone: str | None = option(None, "local weights file, or 'imagenet' (downloads)")
    model_options: dict[str, Any] = option(factory=dict, help="a model option, e.g. --model-opt separable=true "
                                           "(repeatable; see `atrous models NAME`)", flag="--model-opt", append=True)
    # starting from trained weights
    init_from: str | None = option(None, "start from trained weights: an atrous checkpoint, a pretrained folder, "
                                   "a Hub repo id, torchvision:NAME[:WEIGHTS] (torchvision's published "
                                   "weights) or a torchvision/timm state-dict file (a new run: new "
                                   "optimiser and schedule; tensors whose shape changed with the class count "
                                   "start anew, reported in metrics.json; --resume continues from the run's "
                                   "own state instead)")
    freeze: str = option("none", "backbone: its parameters are not trained and its batch norm stays in eval "
                         "mode", choices=("none", "backbone"))
    freeze_bn: bool = option(False, "keep every batch norm's statistics frozen (eval mode), as DeepLab v3's "
                             "second stage does")
    lr_mult: dict[str, Any] = option(factory=dict, help="a learning-rate multiplier, e.g. --lr-mult head=10 "
                                     "(backbone, head, or a parameter-name prefix; repeatable)",
                                     flag="--lr-mult", append=True)
    # the schedule
    iters: int | None = option(None, f"training iterations (default {DEFAULT_ITERS})", ge=1, group="budget")
    epochs: float | None = option(None, "passes over the training set", gt=0, group="budget")
    batch_size: int = option(8, "the global batch (split over processes and --grad-accum)", ge=1)
    crop_size: int | None = option(321, "random crop side (padded with void where smaller)", ge=1)
    optimizer: str = option("sgd", "the optimiser", choices=OPTIMIZERS)
    lr: float | None = option(None, "base learning rate (sgd 0.01, adamw 0.001)", gt=0)
    momentum: float = option(0.9, "SGD momentum", ge=0, lt=1)
    weight_decay: float = option(1e-4, "L2 penalty (AdamW: decoupled)", ge=0)
    poly_power: float = option(0.9, "exponent of the poly learning-rate schedule", ge=0)
    warmup_iters: int = option(0, "linear learning-rate warm-up iterations", ge=0)
    # the loss
    class_weights: str = option("none", "per-class loss weights computed from the training masks",
                                choices=CLASS_WEIGHTINGS)
    bootstrap_class: list[str] = option(factory=list, help="duplicate the training images that contain this class "
                                        "(a name or an index; repeatable): DeepLab v3's bootstrapping of hard classes",
                                        append=True, metavar="CLASS")
    bootstrap_copies: int = option(1, "extra copies of each image a --bootstrap-class selects", ge=1)
    loss: str = option("ce", "training loss", choices=list_losses)
    loss_stride: int = option(1, "score the loss at 1/N of the input's resolution: the label at the centre of each NxN "
                              "cell against the logits resized to that grid (DeepLab v1 and v2 train on labels "
                              "subsampled by 8, their score map's stride)", ge=1)
    loss_options: dict[str, Any] = option(factory=dict, help="an option of the loss, e.g. --loss-opt gamma=3 "
                                          "(repeatable)", flag="--loss-opt", append=True)
    ohem_thresh: float = option(0.7, "ohem: train on pixels whose true-class probability is below "
                                "(= --loss-opt thresh=...)", gt=0, le=1)
    ohem_min_kept: int = option(100_000, "ohem: at least this many pixels per image (= --loss-opt min_kept=...)",
                                ge=0)
    focal_gamma: float = option(2.0, "focal: the focusing exponent (= --loss-opt gamma=...)", ge=0)
    lovasz_per_image: bool = option(False, "lovasz: average per image, not over the batch "
                                    "(= --loss-opt per_image=true)")
    # distributed and batching
    grad_accum: int = option(1, "split each global batch into K micro-batches", ge=1)
    sync_bn: bool | None = option(None, "batch norm over the global batch (default when run on several "
                                  "processes)", other="--no-sync-bn", group="sync_bn")
    # augmentation
    scale_min: float = option(0.5, "smallest random scale", gt=0)
    scale_max: float = option(2.0, "largest random scale", gt=0)
    flip: bool = option(True, "no random left-right flips")
    jitter: float = option(0.0, "colour jitter strength (0 = off)", ge=0)
    elastic: float = option(0.0, "elastic deformation of each crop: displacements with this std in pixels on a 3x3 "
                            "grid, bicubic (U-Net's is 10); 0 is off", ge=0)
    # arithmetic and speed
    precision: str = option("fp32", "auto: bf16 autocast where it is native (CUDA, AVX512-BF16/AMX CPUs), fp32 "
                            "elsewhere (emulated bf16 is many times slower); fp16 uses a gradient scaler "
                            "(for GPUs)", choices=PRECISIONS)
    channels_last: bool = option(False, "channels-last memory format")
    compile: bool = option(False, "torch.compile the model")
    fused_optimizer: bool = option(False, "the optimiser's fused implementation (one kernel)")
    workers: int = option(0, "data-loading processes", ge=0)
    seed: int = option(0, "random seed (data order, augmentation, initialisation)")
    # the run
    resume: bool | str = option(False, "continue the run in --out where it stopped; auto: where a training "
                                "state exists, else start it, and exit 0 at once where it has finished (a "
                                "requeue loop: until atrous train ... --resume auto; do :; done)", also=("auto",))
    overwrite: bool = option(False, "replace a model already in --out")
    stop_after: int | None = option(None, "end this run after N iterations; continue with --resume", ge=1)
    checkpoint_every: int = option(500, "write the model and training state every N iterations", ge=1)
    train_split: str = option("train", "split trained on (CamVid: seq_train holds 0006R0 out)")
    eval_split: str | None = option("val", "split evaluated at the end")
    eval_every: int | None = option(None, "also evaluate every N iterations (a validation curve in log.jsonl)", ge=1)
    eval_batch_size: int = option(4, "images per evaluation batch", ge=1)
    synthetic_length: int | None = option(None, "synthetic scenes per split", ge=1)
    save_pretrained: str | None = option(None, "at the end, also write the model as a folder to share "
                                         "(model.safetensors, config.json, a README.md model card with this "
                                         "recipe and the final evaluation; atrous.from_pretrained reads it)",
                                         metavar="DIR")
    dist_timeout: float = option(DEFAULT_TIMEOUT_S, "seconds a process waits for the others (torchrun)", gt=0)

    def validate(self) -> None:
        """Each option against its declaration, then the rules that tie options together."""
        check_options(self)
        if self.iters is not None and self.epochs is not None:
            raise UserError("give iters or epochs, not both", argument=("iters", "epochs"))
        for part, factor in self.lr_mult.items():
            if isinstance(factor, bool) or not isinstance(factor, int | float) or not math.isfinite(factor) or factor < 0:
                raise UserError(f"lr_mult {part} must be a finite number >= 0, got {factor!r}", argument="lr_mult")
        if self.scale_min > self.scale_max:
            raise UserError(f"scale_min must not exceed scale_max, got {self.scale_min}, {self.scale_max}",
                            argument=("scale_min", "scale_max"))
        check_normalisation(self.mean, self.std)
        weighted = weighted_losses()
        if self.class_weights != "none" and self.loss not in weighted:
            raise UserError(f"class_weights applies to loss {'/'.join(weighted)}, not to loss {self.loss}",
                            argument=("class_weights", "loss", "loss"))
        self.check_task()
        self.loss_settings()  # unknown or bad loss options fail here, before any work
        check_feature_options(self)

    def check_task(self) -> None:
        """What the binary and multilabel tasks cannot take: per-class weights, bootstrapped
        classes and the adversarial loss (one class per pixel), a loss without those tasks."""
        if self.task == "multiclass":
            return
        if self.class_weights != "none":
            raise UserError(f"class_weights weighs classes one against another (multiclass); for task {self.task} "
                            "use loss_options pos_weight=W (loss ce) or alpha=A (loss focal)",
                            argument=("class_weights", "task", "loss_options", "loss", "loss"))
        for name, given in (("bootstrap_class", self.bootstrap_class), ("adversarial", self.adversarial)):
            if given:
                raise UserError(f"task {self.task}: {name} is for the multiclass task (one class per pixel)",
                                argument=("task", name))
        if self.task not in loss_tasks(self.loss):
            raise UserError(f"task {self.task}: loss {self.loss} is for the multiclass task; this task trains "
                            f"with {', '.join(n for n in list_losses() if self.task in loss_tasks(n))}",
                            argument=("task", "loss"))

    def loss_settings(self) -> dict[str, Any]:
        """The options handed to the loss: the legacy flags that belong to it, then --loss-opt."""
        settings = {name: getattr(self, field) for field, (loss, name) in LEGACY_KEYWORDS.items()
                    if loss == self.loss}
        settings.update(self.loss_options)
        return build_loss_options(self.loss, settings)

    @property
    def base_lr(self) -> float:
        return self.lr if self.lr is not None else DEFAULT_LR[self.optimizer]



TrainConfig = TrainOptions  # its earlier name, kept: scripts and the tests build runs with it


def config_json(cfg: TrainConfig) -> dict[str, Any]:
    """The configuration as plain JSON values (config.json, the resume check)."""
    return json.loads(json.dumps(dataclasses.asdict(cfg)))


# the options that may differ between a run and its --resume; any other change would make
# the resumed run differ from one that never stopped
# (the number of processes is not an option: a run resumes on any number, see atrous.training.trainer)
RESUME_MAY_CHANGE = ("resume", "overwrite", "stop_after", "device", "workers", "progress", "checkpoint_every",
                     "eval_split", "eval_batch_size", "eval_every", "out", "compile", "dist_timeout", "grad_accum",
                     "save_pretrained", "log", "log_dir", "log_every", "log_images")
# of those, the ones a --resume keeps unless given again: --grad-accum lets a run started on
# 8 GPUs go on on 4 with the same global batch (batch norm then sees micro-batches of the
# new size); --compile and the trackers (--log ...) are properties of the run
RESUME_INHERITS = ("grad_accum", "compile", "log", "log_dir", "log_every", "log_images")


# where and how a run ran, not what it learnt: left out of the recipe a model card shows
NOT_RECIPE = (*RESUME_MAY_CHANGE, "data_root", "fused_optimizer", "overwrite")
ALWAYS_IN_RECIPE = ("model", "dataset", "train_split")


def recipe(config: dict[str, Any]) -> dict[str, Any]:
    """The options of a run's configuration (its config.json) that made the model: those
    that differ from the defaults, as a config file for `atrous train --config` gives them."""
    defaults = config_json(TrainConfig())
    return {key: value for key, value in config.items() if key in defaults and key not in NOT_RECIPE
            and (key in ALWAYS_IN_RECIPE or value != defaults[key])}
