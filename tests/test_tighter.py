"""Issue 37: tests that a broken implementation would not pass (the lattice's hand-written
backward, flags that could silently do nothing, DeepLab's cascade and MSc by hand, the FCN
stage load's report and how far its labels move)."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

import atrous
from atrous.cli import main
from atrous.crf import DenseCRF
from tests.conftest import small_config
from tests.test_crf import noisy_logits, scene

# -- the lattice's backward ------------------------------------------------------------------


@pytest.mark.parametrize("compatibility", ["potts", "matrix"])
def test_lattice_backward_equals_autograd_through_the_same_lattice(monkeypatch, compatibility):
    """The CRF's gradients through _LatticeFilter's hand-written backward (the transposed
    filter) against autograd through the same lattices' embedding_bag forward
    (``_summed_one_by_one``), on a batch of two 40x56 images in float64: the same K, two
    ways of differentiating it."""
    from atrous.crf import dense, permutohedral

    images = torch.cat([scene(40, 56, seed=0), scene(40, 56, seed=1)]).double()
    logits = noisy_logits(images, 4).double()
    upstream = torch.randn(logits.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)

    def gradients():
        crf = DenseCRF(num_iterations=3, compatibility=compatibility, num_classes=4).double()
        x = logits.clone().requires_grad_(True)
        (crf(x, images) * upstream).sum().backward()
        grads = [x.grad, crf.pos_w.grad, crf.bi_w.grad] + ([crf.compat.grad] if compatibility == "matrix" else [])
        return grads

    calls = []
    original = permutohedral._LatticeFilter.backward
    monkeypatch.setattr(permutohedral._LatticeFilter, "backward",
                        staticmethod(lambda ctx, grad: calls.append(1) or original(ctx, grad)))
    hand_written = gradients()
    assert calls, "the hand-written backward was not used"
    monkeypatch.setattr(dense, "summed_filters", lambda parts, extra=None: permutohedral._summed_one_by_one(parts, extra))
    calls.clear()
    by_autograd = gradients()
    assert not calls
    for got, expected in zip(hand_written, by_autograd, strict=True):
        assert got.abs().max() > 0
        torch.testing.assert_close(got, expected, rtol=1e-9, atol=1e-12)


# -- flags that could silently do nothing ----------------------------------------------------


def test_compile_flag_compiles_the_model(tmp_path, monkeypatch):
    from atrous.training.trainer import Trainer

    seen = []

    def recording(module, *args, **kwargs):
        seen.append(module)
        return module

    monkeypatch.setattr(torch, "compile", recording)
    trainer = Trainer(small_config(tmp_path / "c", compile=True))
    assert seen == [trainer.model] and trainer.net is trainer.model
    seen.clear()
    Trainer(small_config(tmp_path / "n"))
    assert seen == []


def test_fused_optimizer_flag_builds_a_fused_optimizer(tmp_path):
    from atrous.training.trainer import Trainer

    for name in ("sgd", "adamw"):
        trainer = Trainer(small_config(tmp_path / name, optimizer=name, fused_optimizer=True))
        assert trainer.optimizer.defaults["fused"] is True
        plain = Trainer(small_config(tmp_path / f"plain-{name}", optimizer=name))
        assert not plain.optimizer.defaults["fused"]


def test_channels_last_flag_reaches_the_step(tmp_path):
    from atrous.training.trainer import Trainer

    def layouts(channels_last: bool, out):
        trainer = Trainer(small_config(out, iters=1, channels_last=channels_last))
        conv = next(m for m in trainer.model.modules() if isinstance(m, torch.nn.Conv2d) and m.kernel_size == (3, 3))
        seen = []

        def hook(module, args):
            x = args[0]
            seen.append((x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous(),
                         conv.weight.is_contiguous(memory_format=torch.channels_last)
                         and not conv.weight.is_contiguous()))

        trainer.model.register_forward_pre_hook(hook)
        trainer.run()
        return seen

    assert layouts(True, tmp_path / "cl") == [(True, True)]
    assert layouts(False, tmp_path / "plain") == [(False, False)]


def test_adversarial_scaling_input_reaches_the_discriminator(tmp_path, monkeypatch):
    from atrous.models.adversarial import SegmentationDiscriminator
    from atrous.training.trainer import train

    seen = []
    original = SegmentationDiscriminator.forward

    def recording(self, images, maps):
        seen.append(maps.detach().clone())
        return original(self, images, maps)

    monkeypatch.setattr(SegmentationDiscriminator, "forward", recording)

    def real_inputs(encoding, out):
        seen.clear()
        train(small_config(out, iters=1, adversarial=True, adversarial_input=encoding))
        # one step: D(x, s(x)) for the segmenter's loss, then D(x, y) (real) and D(x, s(x))
        assert len(seen) == 3
        return seen[1]

    real = real_inputs("scaling", tmp_path / "scaling")
    torch.testing.assert_close(real.sum(1), torch.ones_like(real[:, 0]))
    top = real.amax(1)
    # scaled ground truth: the true class at max(0.9, s_l), never 1 on every pixel
    assert top.min() >= 0.9 - 1e-6 and (top < 1 - 1e-3).float().mean() > 0.5
    hard = real_inputs("basic", tmp_path / "basic")
    assert set(hard.unique().tolist()) <= {0.0, 1.0}


def test_eval_output_stride_8_changes_a_trained_models_metrics(tmp_path):
    from atrous.training.trainer import train

    train(small_config(tmp_path / "run", iters=1))  # a trained deeplab_v3plus/resnet18
    args = ["eval", "--checkpoint", str(tmp_path / "run" / "model.safetensors"), "--dataset", "synthetic",
            "--max-images", "2", "--synthetic-size", "32", "--precision", "fp32", "--no-progress"]
    assert main([*args, "--output-stride", "8", "--json", str(tmp_path / "m8.json")]) == 0
    assert main([*args, "--json", str(tmp_path / "m16.json")]) == 0
    at_8, at_16 = (json.loads((tmp_path / f).read_text()) for f in ("m8.json", "m16.json"))
    at_8, at_16 = at_8.get("metrics", at_8), at_16.get("metrics", at_16)
    assert at_8["pixels"] == at_16["pixels"]
    assert at_8["per_class_iou"] != at_16["per_class_iou"]
    assert at_8["pixel_accuracy"] != at_16["pixel_accuracy"]


# -- DeepLab by hand -------------------------------------------------------------------------


def test_deeplab_v3_cascade_is_block4_then_the_cascade_by_hand():
    torch.manual_seed(0)
    model = atrous.create_model("deeplab_v3", 3, backbone="resnet18", cascade_blocks=2, aspp=False).eval()
    plain = atrous.create_model("deeplab_v3", 3, backbone="resnet18", aspp=False).eval()
    plain.load_state_dict(model.state_dict(), strict=False)
    x = torch.randn(1, 3, 64, 64)
    # block5 and block6 after block4 (rate 2 at output stride 16): rates 4 and 8, times the
    # multi-grid unit rates (1, 2 for ResNet-18's two units)
    blocks = list(model.cascade)
    assert len(blocks) == 2
    for block, rate in zip(blocks, (4, 8), strict=True):
        for unit, grid in zip(block, (1, 2), strict=True):
            assert unit.conv1.dilation == unit.conv2.dilation == (rate * grid,) * 2
            assert unit.conv1.in_channels == 512 and unit.conv2.out_channels == 512
    with torch.no_grad():
        deepest = model.backbone(x)[-1]  # layer4
        for block in blocks:
            for unit in block:
                residual = deepest
                y = F.relu(unit.bn1(F.conv2d(deepest, unit.conv1.weight, None, 1, rate_of(unit), rate_of(unit))))
                y = unit.bn2(F.conv2d(y, unit.conv2.weight, None, 1, rate_of(unit), rate_of(unit)))
                deepest = F.relu(y + residual)
        by_hand = model.classifier(deepest)
        got = model.segment(x)["out"]
        torch.testing.assert_close(got, by_hand, rtol=1e-5, atol=1e-5)
        without = plain.segment(x)["out"]
        assert (got - without).abs().max() > 1e-2  # the cascade is not skipped


def rate_of(unit) -> int:
    return unit.conv1.dilation[0]


def test_deeplab_msc_adds_each_mlps_scores_by_hand():
    torch.manual_seed(0)
    model = atrous.create_model("deeplab_v1", 3, msc=True, fc_channels=32, msc_channels=8).eval()
    x = torch.randn(1, 3, 48, 64)
    with torch.no_grad():
        pools = model.backbone(x)
        fc7 = model.fc(pools[-1])
        weight, bias = model.classifier.weight, model.classifier.bias
        scores = F.conv2d(fc7, weight[:, :32], bias)
        # the MLPs on the input and pool1 ... pool4 (strides 1, 2, 4, 8, 8 at output stride
        # 8): each a 3x3 conv strided down to stride 8, ReLU, 1x1 conv, ReLU, its scores added
        for k, (tap, stride) in enumerate(zip([x, *pools[:4]], (8, 4, 2, 1, 1), strict=True)):
            branch = model.msc[k]
            hidden = F.relu(F.conv2d(tap, branch[0].weight, branch[0].bias, stride=stride, padding=1))
            mlp = F.relu(F.conv2d(hidden, branch[3].weight, branch[3].bias))
            scores = scores + F.conv2d(mlp, weight[:, 32 + 8 * k : 32 + 8 * (k + 1)])
        got = model.segment(x)["out"]
        assert got.shape == scores.shape == (1, 3, 6, 8)
        torch.testing.assert_close(got, scores, rtol=1e-5, atol=1e-5)
        # every MLP's scores count
        assert F.conv2d(model.fc(pools[-1]), weight[:, :32], bias).sub(got).abs().max() > 1e-3


# -- FCN staged training --------------------------------------------------------------------


def test_fcn16s_from_fcn32s_load_report_and_label_agreement(tmp_path):
    torch.manual_seed(0)
    trained = atrous.create_model("fcn32s", 4).eval()
    with torch.no_grad():
        for parameter in trained.parameters():
            parameter.add_(0.01 * torch.randn_like(parameter))
    atrous.save_checkpoint(trained, str(tmp_path / "coarse.safetensors"))
    model = atrous.create_model("fcn16s", 4).eval()
    report = atrous.load_weights(model, str(tmp_path / "coarse.safetensors")).as_dict()
    assert report["unused"] == [] and report["prefix"] == ""
    backbone = [f"backbone.features.{i}.{p}" for i in (0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28)
                for p in ("weight", "bias")]
    head = [f"head.0.{fc}.{p}" for fc in ("fc6", "fc7") for p in ("weight", "bias")] + ["head.1.weight", "head.1.bias"]
    assert sorted(report["matched"]) == sorted(backbone + head)  # 13 convs, fc6, fc7, the score layer
    assert report["reinitialised"] == ["upsample_final.weight"]  # 32x bilinear -> 16x bilinear
    assert report["missing"] == ["score_skips.0.weight", "score_skips.0.bias", "upsample_skips.0.weight"]
    # the same scores plus a zero skip, upsampled 2x then 16x instead of 32x: the labels agree
    # with FCN-32s' on most pixels, not all (measured 0.930, 0.949, 0.941 on these scenes;
    # 0.91-0.95 on noise images)
    from atrous.data.synthetic import SyntheticScenes

    scenes = SyntheticScenes("val", length=3, size=96)
    agreement = []
    with torch.no_grad():
        for image, _ in scenes:
            image = (image.float() / 255 - 0.45) / 0.22
            agreement.append(float((model(image[None]).argmax(1) == trained(image[None]).argmax(1)).float().mean()))
    assert all(0.9 <= a <= 0.98 for a in agreement), agreement
