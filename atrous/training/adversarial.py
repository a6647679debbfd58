"""Adversarial training of a segmenter (Luc et al., "Semantic Segmentation using
Adversarial Networks", NIPS Workshop 2016, Sec. 3, Eq. 1-3), independent of any training
loop.

API:

    trainer = AdversarialTrainer(discriminator, weight=0.1, lr=1e-4)
    # or AdversarialTrainer.for_model(num_classes, weight=..., in_channels=3)

    trainer.discriminator_loss(images, seg_logits, targets, ignore_index=255, total=None) -> Tensor
        Eq. 2 on the batch, summed over its samples and divided by `total` (default: the
        batch size; a distributed run passes the global batch so that its ranks' gradients add
        up to the one-process gradient).
    trainer.discriminator_step(images, seg_logits, targets, ignore_index=255) -> float
        One optimiser step of the discriminator on (images, one-hot targets) as "real" and
        (images, softmax(seg_logits)) as "fake"; seg_logits are detached. Returns its loss.
    trainer.segmenter_loss(images, seg_logits, total=None) -> Tensor
        weight * BCE(D(images, softmax(seg_logits)), "real") (the paper's non-saturating
        form, Eq. 3). Differentiable w.r.t. seg_logits only: no gradient reaches the
        discriminator's parameters. Add it to the segmentation loss.
    trainer.state_dict() / trainer.load_state_dict(state): discriminator + its optimiser.

In a training loop (images normalised as the segmenter sees them, logits (N, C, H, W) at
the input size, e.g. `model(images, return_aux=True)["out"]`):

    outputs = model(images, return_aux=True)
    loss = segmentation_loss(outputs, targets) + trainer.segmenter_loss(images, outputs["out"])
    optimizer.zero_grad(); loss.backward(); optimizer.step()
    d_loss = trainer.discriminator_step(images, outputs["out"], targets)

That alternates one segmenter and one discriminator step per batch, as the paper does
(it alternates the two objectives, Sec. 3.1); the discriminator sees the logits computed
before the segmenter's update. Void pixels of the ground truth take the segmenter's
probabilities, so they carry no real/fake signal. `weight` is the paper's lambda.

As a training feature (`--adversarial`, `AdversarialFeature`): the term above joins each
micro-batch's loss, the discriminator's gradient is accumulated over the step and summed over
the processes, and it steps after the segmenter. `--adversarial-pretrain N` holds the
segmenter fixed for the first N steps while the discriminator learns against it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from atrous.errors import UserError
from atrous.models.adversarial import (
    ENCODINGS,
    SegmentationDiscriminator,
    label_maps_from_targets,
    scaled_ground_truth,
)
from atrous.options import option
from atrous.runtime import distributed
from atrous.training.hooks import Run, TrainingFeature, register_feature


class AdversarialTrainer:
    def __init__(
        self,
        discriminator: SegmentationDiscriminator,
        *,
        weight: float = 0.1,
        lr: float = 1e-4,
        optimizer: torch.optim.Optimizer | None = None,
    ) -> None:
        self.discriminator = discriminator
        self.weight = weight
        self.optimizer = optimizer or torch.optim.Adam(discriminator.parameters(), lr=lr)

    @classmethod
    def for_model(
        cls, num_classes: int, *, in_channels: int = 3, weight: float = 0.1, lr: float = 1e-4,
        encoding: str = "product",
    ) -> AdversarialTrainer:
        discriminator = SegmentationDiscriminator(num_classes, in_channels=in_channels, encoding=encoding)
        return cls(discriminator, weight=weight, lr=lr)

    def to(self, device: torch.device | str) -> AdversarialTrainer:
        self.discriminator.to(device)
        return self

    def discriminator_loss(
        self,
        images: torch.Tensor,
        seg_logits: torch.Tensor,
        targets: torch.Tensor,
        ignore_index: int = 255,
        total: int | None = None,
    ) -> torch.Tensor:
        """Eq. 2: BCE(D(x, y), 1) + BCE(D(x, s(x)), 0), summed over the batch and divided by
        `total` (default: this batch's size; the global batch in a distributed run)."""
        self.discriminator.train()
        fake = seg_logits.detach().softmax(dim=1)  # (N, C, H, W)
        real = label_maps_from_targets(targets, fake, ignore_index)
        if self.discriminator.encoding == "scaling":  # Sec. 3.2: ground truth that is not one-hot
            real = scaled_ground_truth(real, fake)
        real_logits = self.discriminator(images, real)
        fake_logits = self.discriminator(images, fake)
        loss = F.binary_cross_entropy_with_logits(
            real_logits, torch.ones_like(real_logits), reduction="sum"
        ) + F.binary_cross_entropy_with_logits(fake_logits, torch.zeros_like(fake_logits), reduction="sum")
        return loss / (total or len(images))

    def discriminator_step(
        self,
        images: torch.Tensor,
        seg_logits: torch.Tensor,
        targets: torch.Tensor,
        ignore_index: int = 255,
    ) -> float:
        """Eq. 2, one optimiser step; returns the loss."""
        loss = self.discriminator_loss(images, seg_logits, targets, ignore_index)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)  # no gradient lingers between steps
        return loss.item()

    def segmenter_loss(
        self, images: torch.Tensor, seg_logits: torch.Tensor, total: int | None = None
    ) -> torch.Tensor:
        """Eq. 3 (non-saturating): weight * BCE(D(x, s(x)), 1), gradient to the segmenter only;
        summed over the batch and divided by `total` (default: this batch's size)."""
        parameters = list(self.discriminator.parameters())
        flags = [p.requires_grad for p in parameters]
        for p in parameters:
            p.requires_grad_(False)
        try:
            logits = self.discriminator(images, seg_logits.softmax(dim=1))
        finally:
            for p, flag in zip(parameters, flags, strict=True):
                p.requires_grad_(flag)
        bce = F.binary_cross_entropy_with_logits(logits, torch.ones_like(logits), reduction="sum")
        return self.weight * bce / (total or len(images))

    def state_dict(self) -> dict[str, Any]:
        return {"discriminator": self.discriminator.state_dict(), "optimizer": self.optimizer.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.discriminator.load_state_dict(state["discriminator"])
        self.optimizer.load_state_dict(state["optimizer"])


@dataclass(kw_only=True)
class AdversarialOptions:
    adversarial: bool = option(False, "add Luc et al.'s adversarial loss")
    adversarial_weight: float = option(0.1, "lambda of the adversarial loss", ge=0)
    adversarial_pretrain: int = option(0, "iterations at the start in which only the discriminator learns, the "
                                       "segmenter held fixed (Luc et al.: D pre-trained against a trained segmenter, "
                                       "from --init-from, before both train together)", ge=0)
    adversarial_input: str = option("product", "the discriminator's input encoding (Luc et al., Sec. 3.2): the image "
                                    "masked by each class map, the maps beside the image, or those with the ground "
                                    "truth softened", choices=list(ENCODINGS))


@register_feature("adversarial")
class AdversarialFeature(TrainingFeature):
    """--adversarial: Luc et al.'s discriminator trained beside the segmenter."""

    def __init__(self, adversary: AdversarialTrainer, pretrain: int, batch_size: int) -> None:
        self.adversary, self.pretrain, self.batch_size = adversary, pretrain, batch_size

    @classmethod
    def check_options(cls, cfg: Any) -> None:
        if cfg.adversarial_pretrain and not cfg.adversarial:
            raise UserError("adversarial_pretrain trains the discriminator; add adversarial",
                            argument=("adversarial_pretrain", "adversarial"))

    @classmethod
    def from_config(cls, cfg: Any, run: Run) -> AdversarialFeature | None:
        if not cfg.adversarial:
            return None
        adversary = AdversarialTrainer.for_model(run.info.num_classes, weight=cfg.adversarial_weight,
                                                 encoding=cfg.adversarial_input).to(run.device)
        return cls(adversary, cfg.adversarial_pretrain, cfg.batch_size)

    def trains_model(self, run: Run) -> bool:
        return run.step >= self.pretrain  # Luc et al.'s second phase: the trained segmenter held fixed

    def loss_terms(self, run: Run, images: torch.Tensor, outputs: dict[str, torch.Tensor],
                   masks: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"adv_g": self.adversary.segmenter_loss(images, outputs["out"].float(), total=self.batch_size)}

    def after_backward(self, run: Run, images: torch.Tensor, outputs: dict[str, torch.Tensor],
                       masks: torch.Tensor) -> dict[str, torch.Tensor]:
        """D's gradient, accumulated until the step's end (D sees the logits before the segmenter's update)."""
        d_loss = self.adversary.discriminator_loss(images, outputs["out"].float(), masks,
                                                   ignore_index=run.info.ignore_index, total=self.batch_size)
        d_loss.backward()
        return {"adv_d": d_loss.detach()}

    def after_step(self, run: Run, parts: dict[str, float]) -> None:
        distributed.all_reduce_gradients(self.adversary.discriminator.parameters())
        self.adversary.optimizer.step()
        self.adversary.optimizer.zero_grad(set_to_none=True)

    def state_dict(self) -> dict[str, Any]:
        return self.adversary.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.adversary.load_state_dict(state)
