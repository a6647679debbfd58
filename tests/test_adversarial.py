"""Adversarial training (Luc et al. 2016): product encoding, discriminator, alternating steps."""

from __future__ import annotations

import torch
import torch.nn.functional as F

import atrous
from atrous.models.adversarial import (
    SegmentationDiscriminator,
    label_maps_from_targets,
    product_encoding,
)
from atrous.training.adversarial import AdversarialTrainer


def test_product_encoding_masks_the_image_by_each_class() -> None:
    images = torch.randn(2, 3, 5, 6)
    labels = torch.rand(2, 4, 5, 6)
    encoded = product_encoding(images, labels)
    assert encoded.shape == (2, 12, 5, 6)
    torch.testing.assert_close(encoded[:, 3 * 2 + 1], images[:, 1] * labels[:, 2])


def test_void_pixels_take_the_segmenter_probabilities() -> None:
    targets = torch.tensor([[[0, 2], [255, 1]]])
    fill = torch.full((1, 3, 2, 2), 0.25)
    maps = label_maps_from_targets(targets, fill)
    assert maps[0, :, 0, 1].tolist() == [0, 0, 1]
    assert maps[0, :, 1, 0].tolist() == [0.25] * 3


def test_alternating_adversarial_training_steps() -> None:
    torch.manual_seed(0)
    model = atrous.create_model("segnet_basic", 3, channels=16).train()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    trainer = AdversarialTrainer.for_model(3, weight=0.5, lr=1e-3)
    images = torch.randn(2, 3, 32, 32)
    targets = (images[:, 0] > 0).long()
    targets[:, :2] = 255
    d_losses, adv_losses = [], []
    for _ in range(3):
        logits = model(images)
        adv = trainer.segmenter_loss(images, logits)
        loss = F.cross_entropy(logits, targets, ignore_index=255) + adv
        optimizer.zero_grad()
        loss.backward()
        # the segmenter's adversarial loss leaves no gradient on the discriminator
        assert all(p.grad is None for p in trainer.discriminator.parameters())
        optimizer.step()
        before = [p.detach().clone() for p in model.parameters()]
        d_losses.append(trainer.discriminator_step(images, logits, targets))
        assert all(torch.equal(b, p) for b, p in zip(before, model.parameters(), strict=True))
        adv_losses.append(adv.item())
    assert all(torch.isfinite(torch.tensor(d_losses + adv_losses)))
    assert all(v > 0 for v in adv_losses + d_losses)
    state = trainer.state_dict()
    trainer.load_state_dict(state)


def test_discriminator_learns_to_tell_one_hot_from_soft_maps() -> None:
    torch.manual_seed(0)
    trainer = AdversarialTrainer(SegmentationDiscriminator(3, widths=(32, "M", 64)), lr=1e-3)
    images = torch.randn(4, 3, 16, 16)
    targets = torch.randint(0, 3, (4, 16, 16))
    soft_logits = torch.randn(4, 3, 16, 16) * 0.1
    losses = [trainer.discriminator_step(images, soft_logits, targets) for _ in range(10)]
    assert losses[-1] < losses[0]


def test_scaling_softens_the_ground_truth_as_luc_et_al() -> None:
    """Sec. 3.2, "scaling": the true class at max(tau, s_l), tau = 0.9, the others sharing the
    rest in the segmenter's proportions; a void pixel keeps the segmenter's maps."""
    from atrous.models.adversarial import scaled_ground_truth

    probabilities = torch.tensor([[0.5, 0.3, 0.2], [0.02, 0.95, 0.03], [0.6, 0.3, 0.1]]).T.reshape(1, 3, 1, 3)
    targets = torch.tensor([[[1, 1, 255]]])
    real = label_maps_from_targets(targets, probabilities)
    scaled = scaled_ground_truth(real, probabilities)[0, :, 0].T
    expected = torch.tensor([[0.5 * 0.1 / 0.7, 0.9, 0.2 * 0.1 / 0.7],  # s_l = 0.3 < tau
                             [0.02, 0.95, 0.03],  # s_l = 0.95 > tau: the prediction itself
                             [0.6, 0.3, 0.1]])  # void
    torch.testing.assert_close(scaled, expected)
    torch.testing.assert_close(scaled.sum(1), torch.ones(3))


def test_each_input_encoding_trains(tmp_path) -> None:
    from atrous.training.trainer import TrainConfig, train

    widths = {"product": 3 * 7, "basic": 3 + 7, "scaling": 3 + 7}  # 7 synthetic classes
    for encoding, channels in widths.items():
        trainer = AdversarialTrainer.for_model(7, encoding=encoding)
        assert trainer.discriminator.net[0].in_channels == channels
        out = tmp_path / encoding
        train(TrainConfig(model="segnet_basic", model_options={"channels": 8}, dataset="synthetic", synthetic_size=32,
                          synthetic_length=4, crop_size=32, batch_size=2, iters=2, eval_split=None, progress=False,
                          out=str(out), adversarial=True, adversarial_input=encoding))
        assert (out / "model.safetensors").is_file()


def test_discriminator_pretraining_holds_the_trained_segmenter_fixed(tmp_path) -> None:
    """Luc et al.'s procedure: a trained segmenter, the discriminator pre-trained against it
    (--adversarial-pretrain N: the segmenter neither steps nor updates its batch norm), then both."""
    import pytest
    from safetensors.torch import load_file

    from atrous.errors import UserError
    from atrous.training.trainer import TrainConfig, train

    base = dict(model="segnet_basic", model_options={"channels": 8}, dataset="synthetic", synthetic_size=32,
                synthetic_length=4, crop_size=32, batch_size=2, eval_split=None, progress=False)
    train(TrainConfig(**base, iters=2, out=str(tmp_path / "segmenter")))
    trained = load_file(tmp_path / "segmenter" / "model.safetensors")
    source = str(tmp_path / "segmenter" / "model.safetensors")
    train(TrainConfig(**base, iters=2, out=str(tmp_path / "phase2"), init_from=source, adversarial=True,
                      adversarial_pretrain=2))
    held = load_file(tmp_path / "phase2" / "model.safetensors")
    assert all(torch.equal(held[k], trained[k]) for k in trained)  # weights and running statistics
    train(TrainConfig(**base, iters=2, out=str(tmp_path / "phase3"), init_from=source, adversarial=True,
                      adversarial_pretrain=1))
    joint = load_file(tmp_path / "phase3" / "model.safetensors")
    assert any(not torch.equal(joint[k], trained[k]) for k in trained)  # the second step trains both
    with pytest.raises(UserError, match="add adversarial"):
        train(TrainConfig(**base, iters=1, out=str(tmp_path / "refused"), adversarial_pretrain=1))
