"""The seed architectures: registry, any-size forward, paper parameter counts, training
steps, and the details that make each one the paper's (bilinear deconvs, unpooling at the
argmax, max / attention fusion over scales)."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
import torchvision

import atrous
from atrous.layers import BilinearConvTranspose2d, bilinear_kernel
from atrous.models.fcn import load_vgg16_classifier
from atrous.models.segnet import pool_with_indices, unpool

PAPER_MODELS = [
    "fcn32s", "fcn16s", "fcn8s", "segnet", "segnet_basic", "unet", "deeplab_v1", "deeplab_v2",
    "deeplab_v3", "deeplab_v3plus", "refinenet", "pspnet", "attention_to_scale",
]  # fmt: skip

# (name, options) small enough to train on the CPU in a test
SMALL = {
    "fcn32s": {"backbone": "resnet18"},
    "fcn16s": {"backbone": "resnet18", "output_stride": 32},
    "fcn8s": {"backbone": "resnet18", "output_stride": 32, "aux_head": True},
    "segnet": {},
    "segnet_basic": {},
    "unet": {"base_channels": 8},
    "deeplab_v1": {},
    "deeplab_v2": {"backbone": "resnet18", "input_scales": (1.0, 0.75, 0.5)},
    "deeplab_v3": {"backbone": "resnet18"},
    "deeplab_v3plus": {"backbone": "resnet18"},
    "refinenet": {"backbone": "resnet18", "channels": 32},
    "pspnet": {"backbone": "resnet18"},
    "attention_to_scale": {"base": "deeplab_v2", "backbone": "resnet18"},
}

# the papers' parameter counts: (name, num_classes, in_channels, millions)
PAPER_PARAMS = [
    ("fcn8s", 21, 3, 134.0),  # Long et al., Table 1 / Sec. 4.2
    ("deeplab_v1", 21, 3, 20.5),  # Chen et al. ICLR 2015, Table 2 (LargeFOV)
    ("segnet", 11, 3, 29.4),  # Badrinarayanan et al. 2017 (SegNet, 11 CamVid classes)
    ("unet", 2, 1, 31.0),  # Ronneberger et al. (1 input channel, 2 classes)
]


def meta_model(name: str, num_classes: int = 21, **kwargs) -> atrous.SegmentationModel:
    """The model with tensors on the meta device: built and run without memory or compute."""
    with torch.device("meta"):
        return atrous.create_model(name, num_classes, **kwargs)


def test_every_seed_architecture_is_registered() -> None:
    assert set(PAPER_MODELS) <= set(atrous.list_models())


@pytest.mark.parametrize("name", PAPER_MODELS)
def test_docstring_names_paper(name: str) -> None:
    model = meta_model(name)
    doc = type(model).__doc__ or ""
    module_doc = __import__(type(model).__module__, fromlist=["_"]).__doc__ or ""
    assert "Sec." in doc + module_doc
    assert any(year in module_doc for year in ("2015", "2016", "2017"))


@pytest.mark.parametrize("name,num_classes,in_channels,millions", PAPER_PARAMS)
def test_parameter_count_matches_paper(name: str, num_classes: int, in_channels: int, millions: float) -> None:
    model = meta_model(name, num_classes, in_channels=in_channels)
    count = sum(p.numel() for p in model.parameters()) / 1e6
    assert abs(count - millions) / millions < 0.01, f"{name}: {count:.2f}M vs paper {millions}M"


@pytest.mark.parametrize("name", PAPER_MODELS)
@pytest.mark.parametrize("size", [(97, 131), (360, 480)])
def test_paper_configuration_keeps_input_size(name: str, size: tuple[int, int]) -> None:
    """Shape propagation of the paper's configuration on the meta device (no compute)."""
    model = meta_model(name, 5).eval()
    out = model(torch.empty(2, 3, *size, device="meta"))
    assert out.shape == (2, 5, *size)


@pytest.mark.parametrize("name", ["fcn8s", "segnet_basic"])
def test_small_model_real_forward_at_odd_and_camvid_sizes(name: str) -> None:
    model = atrous.create_model(name, 3, **SMALL[name]).eval()
    with torch.no_grad():
        for size in [(97, 131), (360, 480)]:
            out = model(torch.randn(1, 3, *size))
            assert out.shape == (1, 3, *size)
            assert torch.isfinite(out).all()


def synthetic_batch(size: int = 64, num_classes: int = 3) -> tuple[torch.Tensor, torch.Tensor]:
    """Images whose class is readable from the first channel's sign and the column."""
    gen = torch.Generator().manual_seed(0)
    images = torch.randn(2, 3, size, size, generator=gen)
    target = (images[:, 0] > 0).long()
    target[:, :, : size // 4] = num_classes - 1
    target[0, :3, :3] = 255  # void
    return images, target


def total_loss(model: atrous.SegmentationModel, images: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    outputs = model(images, return_aux=True)
    assert set(outputs) == {"out", *model.aux_weights}
    loss = F.cross_entropy(outputs["out"], target, ignore_index=255)
    for key, weight in model.aux_weights.items():
        loss = loss + weight * F.cross_entropy(outputs[key], target, ignore_index=255)
    return loss


@pytest.mark.parametrize("name", PAPER_MODELS)
def test_a_few_training_steps_lower_the_loss(name: str) -> None:
    torch.manual_seed(0)
    model = atrous.create_model(name, 3, **SMALL[name]).train()
    images, target = synthetic_batch(32)
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    losses = []
    for _ in range(3):
        loss = total_loss(model, images, target)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert all(torch.isfinite(torch.tensor(losses)))
    assert losses[-1] < losses[0], losses


# ---- FCN -------------------------------------------------------------------------------


def test_bilinear_deconv_matches_bilinear_interpolation_inside() -> None:
    up = BilinearConvTranspose2d(2, 2)
    x = torch.randn(1, 2, 6, 7)
    expected = F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False)
    got = up(x)
    assert got.shape == expected.shape
    torch.testing.assert_close(got[..., 1:-1, 1:-1], expected[..., 1:-1, 1:-1])


def test_fcn8s_upsamplers_start_bilinear_and_skips_at_zero() -> None:
    model = meta_model("fcn8s", 4)
    assert [type(u).__name__ for u in model.upsample_skips] == ["BilinearConvTranspose2d"] * 2
    real = atrous.create_model("fcn8s", 4, backbone="resnet18", output_stride=32)
    for up in real.upsample_skips:
        torch.testing.assert_close(up.weight, bilinear_kernel(4, 4))
        assert up.weight.requires_grad
    for score in real.score_skips:
        assert score.weight.abs().sum() == 0
    final = model.upsample_final
    assert final.stride == (8, 8) and final.kernel_size == (16, 16) and not final.weight.requires_grad


def test_fcn_loads_torchvision_vgg16_with_fc6_fc7_as_convolutions(tmp_path) -> None:
    torch.manual_seed(0)
    vgg = torchvision.models.vgg16(weights=None).eval()
    path = tmp_path / "vgg16_features.pth"  # the features only: 58 MB rather than 550
    torch.save({k: v for k, v in vgg.state_dict().items() if k.startswith("features.")}, path)
    model = atrous.create_model("fcn32s", 21, pretrained_backbone=str(path)).eval()
    load_vgg16_classifier(model.head[0], vgg.state_dict())
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(model.backbone(x)[-1], vgg.features(x))
        pool5 = torch.randn(1, 512, 7, 7)
        fc7_conv = model.head[0](pool5)[:, :, 3, 3]  # the centre sees the whole 7x7 window
        fc7_linear = vgg.classifier[:5](pool5.flatten(1))
    torch.testing.assert_close(fc7_conv, fc7_linear, atol=1e-4, rtol=1e-4)


def test_unet_as_published_maps_a_572_tile_to_388_scores() -> None:
    """Ronneberger et al., Fig. 1: unpadded 3x3 convolutions, skips cropped: 572 -> 388."""
    model = meta_model("unet", 2, in_channels=1, padding="valid")
    assert model.valid_scores(torch.empty(1, 1, 572, 572, device="meta")).shape == (1, 2, 388, 388)
    assert all(c.padding == (0, 0) for c in model.modules() if isinstance(c, torch.nn.Conv2d))
    same = meta_model("unet", 2, in_channels=1)
    assert sum(p.numel() for p in model.parameters()) == sum(p.numel() for p in same.parameters())
    with pytest.raises(ValueError, match="not an input side"):
        model.valid_scores(torch.empty(1, 1, 570, 572, device="meta"))


def test_mirror_pad_reflects_as_numpy_at_any_width() -> None:
    import numpy as np

    from atrous.models.unet import mirror_pad

    x = torch.arange(15.0).reshape(1, 1, 3, 5)
    got = mirror_pad(x, 7, 2, 1, 11)[0, 0].numpy()
    np.testing.assert_array_equal(got, np.pad(x[0, 0].numpy(), ((7, 2), (1, 11)), mode="reflect"))


def test_unet_overlap_tile_stitches_tiles_run_by_hand() -> None:
    """Fig. 2: the image mirrored by the 92-pixel margin the network consumes, output tiles of
    at most `tile` pixels, each computed from its input tile; model(x) keeps the input's size."""
    import numpy as np

    torch.manual_seed(0)
    model = atrous.create_model("unet", 3, in_channels=1, padding="valid", base_channels=4, tile=20).eval()
    image = torch.randn(1, 1, 37, 50)
    with torch.no_grad():
        got = model(image)
        padded = torch.from_numpy(np.pad(image[0, 0].numpy(), ((92, 92 + 2 * 20 - 37), (92, 92 + 3 * 20 - 50)),
                                         mode="reflect"))[None, None]
        expected = torch.zeros(1, 3, 40, 60)
        for i in range(2):
            for j in range(3):
                tile = padded[..., 20 * i : 20 * i + 204, 20 * j : 20 * j + 204]  # 204 -> 20
                expected[..., 20 * i : 20 * i + 20, 20 * j : 20 * j + 20] = model.valid_scores(tile)
    assert got.shape == (1, 3, 37, 50)
    torch.testing.assert_close(got, expected[..., :37, :50])
    with pytest.raises(ValueError, match="not an output size"):
        atrous.create_model("unet", 3, padding="valid", tile=101)


# ---- SegNet ------------------------------------------------------------------------------


def test_unpooling_puts_values_back_at_the_argmax() -> None:
    x = torch.randn(2, 3, 8, 10)
    pooled, memory = pool_with_indices(x)
    restored = unpool(pooled, memory)
    windows = x.unfold(2, 2, 2).unfold(3, 2, 2)  # (N, C, 4, 5, 2, 2)
    is_max = windows == windows.amax(dim=(-1, -2), keepdim=True)
    mask = is_max.permute(0, 1, 2, 4, 3, 5).reshape(x.shape)
    torch.testing.assert_close(restored, x * mask)
    assert (restored != 0).sum() == pooled.numel()


def test_segnet_encoder_loads_torchvision_vgg16_bn(tmp_path) -> None:
    vgg = torchvision.models.vgg16_bn(weights=None).eval()
    for module in vgg.modules():  # non-trivial BN statistics
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.uniform_(-0.1, 0.1)
            module.running_var.uniform_(0.5, 1.5)
    path = tmp_path / "vgg16_bn.pth"
    torch.save(vgg.state_dict(), path)
    model = atrous.create_model("segnet", 5, pretrained_backbone=str(path)).eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        encoded, memories = model.encode(x)
        torch.testing.assert_close(encoded, vgg.features(x))
    assert len(memories) == 5
    assert sum(isinstance(m, torch.nn.Conv2d) for m in model.encoder.modules()) == 13


def test_segnet_decoder_is_the_reference_prototxts() -> None:
    """SegNet-Tutorial's segnet_train.prototxt: conv5_3_D ... conv1_2_D (3x3, batch norm, ReLU;
    widths 512 512 512 | 512 512 256 | 256 256 128 | 128 64 | 64), then conv1_1_D to the classes."""
    model = meta_model("segnet", 11)
    convs = [m for m in model.decoder.modules() if isinstance(m, torch.nn.Conv2d)] + [model.classifier]
    assert [c.out_channels for c in convs] == [512, 512, 512, 512, 512, 256, 256, 256, 128, 128, 64, 64, 11]
    assert all(c.kernel_size == (3, 3) for c in convs)
    norms = [m for m in model.decoder.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert len(norms) == 12  # every decoder convolution but the classifier
    extra = meta_model("segnet", 11, extra_decoder_conv=True)
    assert sum(isinstance(m, torch.nn.Conv2d) for m in extra.decoder.modules()) == 13  # one more


def test_a_segnet_checkpoint_saved_with_the_extra_conv_still_loads(tmp_path) -> None:
    """Checkpoints written before the decoder matched the reference carry the extra 64 -> 64
    convolution and no option naming it: recognised by their tensors, they load as they were."""
    from safetensors.torch import load_file, save_file

    torch.manual_seed(0)
    old = atrous.create_model("segnet", 3, extra_decoder_conv=True).eval()
    path = tmp_path / "old.safetensors"
    atrous.save_checkpoint(old, str(path))
    header = atrous.checkpoints.checkpoint.read_checkpoint_header(str(path))
    header["model"]["options"] = {}  # as an older atrous wrote it
    save_file(load_file(path), path, metadata={"atrous": json.dumps(header)})
    loaded = atrous.load_checkpoint(str(path))
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(loaded(x), old(x))


def test_segnet_basic_decoder_has_no_relu_and_no_bias() -> None:
    model = meta_model("segnet_basic", 4)
    assert not any(isinstance(m, torch.nn.ReLU) for m in model.decoder.modules())
    convs = [m for m in model.encoder.modules() if isinstance(m, torch.nn.Conv2d)]
    assert len(convs) == 4 and all(c.kernel_size == (7, 7) and c.bias is None for c in convs)


# ---- DeepLab v1 / v2 -------------------------------------------------------------------


def test_deeplab_v1_is_largefov() -> None:
    model = meta_model("deeplab_v1")
    pools = [m for m in model.backbone.features if isinstance(m, torch.nn.MaxPool2d)]
    assert [(p.kernel_size, p.stride) for p in pools] == [(3, 2)] * 3 + [(3, 1)] * 2
    conv5 = [m for m in model.backbone.features if isinstance(m, torch.nn.Conv2d)][-3:]
    assert all(c.dilation == (2, 2) for c in conv5)
    assert model.fc.fc6.dilation == (12, 12) and model.fc.fc6.out_channels == 1024
    assert model.fc.fc7.kernel_size == (1, 1) and model.fc.fc7.out_channels == 1024
    out = model.segment(torch.empty(1, 3, 64, 96, device="meta"))["out"]
    assert out.shape[-2:] == (8, 12)  # output stride 8


@pytest.mark.parametrize(
    "variant,kernel,rate,width,millions",
    [("largefov", 3, 12, 1024, 20.5), ("7x7", 7, 4, 4096, 134.3), ("4x4", 4, 8, 4096, 65.1),
     ("4x4_rate4", 4, 4, 4096, 65.1)],
)
def test_deeplab_v1_named_networks_of_table_2(variant, kernel, rate, width, millions) -> None:
    """Chen et al. ICLR 2015, Table 2: fc6 kernel, input stride (rate), width, parameters
    (21 classes); every variant keeps the score map at stride 8, whatever its even or odd kernel."""
    model = meta_model("deeplab_v1", variant=variant)
    fc6 = model.fc.fc6
    assert (fc6.kernel_size, fc6.dilation, fc6.out_channels) == ((kernel, kernel), (rate, rate), width)
    assert round(sum(p.numel() for p in model.parameters()) / 1e6, 1) == millions
    assert model.segment(torch.empty(1, 3, 64, 96, device="meta"))["out"].shape[-2:] == (8, 12)


def test_deeplab_msc_adds_five_128_channel_mlps() -> None:
    """DeepLab-MSc (Sec. 4.1): MLPs (3x3 128 - 1x1 128) on the input and pool1-pool4, their
    640 channels concatenated to fc7's before fc8; each MLP reaches the stride-8 grid."""
    torch.manual_seed(0)
    model = atrous.create_model("deeplab_v1", 5, msc=True, fc_channels=64).eval()
    assert len(model.msc) == 5 and model.classifier.in_channels == 64 + 5 * 128
    assert [branch[0].stride for branch in model.msc] == [(8, 8), (4, 4), (2, 2), (1, 1), (1, 1)]
    assert [branch[0].in_channels for branch in model.msc] == [3, 64, 128, 256, 512]
    x = torch.randn(1, 3, 48, 40)
    with torch.no_grad():
        features, logits = model.features_and_logits(x)
        assert features.shape == (1, 64 + 640, 6, 5) and logits.shape == (1, 5, 6, 5)
        assert model(torch.randn(1, 3, 45, 37)).shape == (1, 5, 45, 37)


def test_deeplab_v3_going_deeper_cascades_copies_of_block4() -> None:
    """Chen et al. 2017, Sec. 3.2, Fig. 3: block5-block7 copies of block4 after it, the rate
    doubling from block to block (2, 4, 8, 16 at output stride 16), each unit times its
    multi-grid rate (1, 2, 4); the cascaded model puts the classifier on block7 (no ASPP)."""
    model = meta_model("deeplab_v3", 21, backbone="resnet50", cascade_blocks=3, aspp=False)
    layer4 = model.backbone.body.layer4
    assert [u.conv2.dilation[0] for u in layer4] == [2, 4, 8]
    assert [[u.conv2.dilation[0] for u in block] for block in model.cascade] == [[4, 8, 16], [8, 16, 32], [16, 32, 64]]
    unit = sum(p.numel() for p in layer4[1].parameters())  # a unit that takes block4's output
    assert all(sum(p.numel() for p in block.parameters()) == 3 * unit for block in model.cascade)
    assert model.classifier.in_channels == 2048 and isinstance(model.aspp, torch.nn.Identity)
    assert model.segment(torch.empty(1, 3, 64, 96, device="meta"))["out"].shape[-2:] == (4, 6)
    at8 = meta_model("deeplab_v3", 21, backbone="resnet50", cascade_blocks=1, output_stride=8)
    assert [u.conv2.dilation[0] for u in at8.cascade[0]] == [8, 16, 32]  # block4 at 4, block5 at 8
    with pytest.raises(ValueError, match="head_conv"):
        meta_model("deeplab_v3", 21, backbone="resnet50", aspp=False, head_conv=True)


def test_deeplab_v2_vgg16_aspp_l_branches_are_fc6_fc7_fc8() -> None:
    """TPAMI 2017, Fig. 7: on VGG16 each ASPP-L branch is fc6 (3x3 at rate 6/12/18/24, 1024) -
    fc7 (1x1, 1024) - fc8, the four branches' scores summed; DeepLab v1's dilated VGG16 below."""
    model = meta_model("deeplab_v2", 21, backbone="vgg16")
    convs = [[m for m in branch.modules() if isinstance(m, torch.nn.Conv2d)] for branch in model.aspp.branches]
    assert [c[0].dilation[0] for c in convs] == [6, 12, 18, 24]
    assert all([(x.kernel_size[0], x.out_channels) for x in c] == [(3, 1024), (1, 1024), (1, 21)] for c in convs)
    branch = 3 * 3 * 512 * 1024 + 1024 + 1024 * 1024 + 1024 + 1024 * 21 + 21
    vgg16_convs = 14_714_688
    assert sum(p.numel() for p in model.parameters()) == vgg16_convs + 4 * branch
    torch.manual_seed(0)
    small = atrous.create_model("deeplab_v2", 3, backbone="vgg16").eval()
    x = torch.randn(1, 3, 40, 48)
    with torch.no_grad():
        features = small.backbone(x)[-1]
        assert features.shape[-2:] == (5, 6)  # output stride 8
        summed = sum(branch(features) for branch in small.aspp.branches)
        torch.testing.assert_close(small.segment(x)["out"], summed)


def test_deeplab_v2_aspp_l_and_max_fusion_over_scales() -> None:
    torch.manual_seed(0)
    model = atrous.create_model("deeplab_v2", 3, backbone="resnet18", input_scales=(1, 0.75, 0.5)).train()
    assert [b.dilation for b in model.aspp.branches] == [(r, r) for r in (6, 12, 18, 24)]
    assert all(b.out_channels == 3 for b in model.aspp.branches)
    with torch.no_grad():
        outputs = model.segment(torch.randn(1, 3, 64, 64))
    scales = torch.stack([outputs[k] for k in ("scale_1", "scale_0.75", "scale_0.5")])
    torch.testing.assert_close(outputs["out"], scales.amax(dim=0))
    assert outputs["out"].shape[-2:] == (8, 8)
    assert model.aux_weights == {"scale_1": 1.0, "scale_0.75": 1.0, "scale_0.5": 1.0}


# ---- PSPNet, RefineNet, Attention to scale --------------------------------------------


def test_pspnet_pyramid_bins_and_aux_only_in_training() -> None:
    model = atrous.create_model("pspnet", 3, backbone="resnet18")
    assert [s[0].output_size for s in model.pyramid.stages] == [1, 2, 3, 6]
    assert model.aux_weights == {"aux": 0.4}
    x = torch.randn(2, 3, 32, 32)
    assert set(model.train()(x, return_aux=True)) == {"out", "aux"}
    with torch.no_grad():
        assert set(model.eval()(x, return_aux=True)) == {"out"}


def test_refinenet_is_four_cascaded_with_crp() -> None:
    model = meta_model("refinenet")
    assert len(model.refine) == 4
    assert [len(b.adapt) for b in model.refine] == [1, 2, 2, 2]
    assert all(len(b.pool.blocks) == 2 for b in model.refine)
    out = model.segment(torch.empty(1, 3, 64, 64, device="meta"))["out"]
    assert out.shape[-2:] == (16, 16)  # stride 4


def test_attention_to_scale_fuses_per_scale_logits_convexly() -> None:
    torch.manual_seed(0)
    model = atrous.create_model("attention_to_scale", 3, base="deeplab_v2", backbone="resnet18").train()
    assert model.aux_weights == {"scale_1": 1.0, "scale_0.5": 1.0}
    assert model.attention[0].out_channels == 512 and model.attention[-1].out_channels == 2
    with torch.no_grad():
        outputs = model.segment(torch.randn(2, 3, 32, 32))
    both = torch.stack([outputs["scale_1"], outputs["scale_0.5"]])
    assert (outputs["out"] <= both.amax(0) + 1e-5).all() and (outputs["out"] >= both.amin(0) - 1e-5).all()
    images, target = synthetic_batch(32)
    loss = total_loss(model, images, target)
    assert torch.isfinite(loss)
    loss.backward()
    assert model.attention[0].weight.grad.abs().sum() > 0


def test_attention_to_scale_default_base_is_deeplab_largefov() -> None:
    model = meta_model("attention_to_scale")
    assert type(model.base).__name__ == "DeepLabV1" and model.scales == (1.0, 0.5)
    assert model.attention[0].in_channels == 2 * 1024


# ---- initialisation ----------------------------------------------------------------------


def test_he_init_of_the_layers_atrous_builds() -> None:
    """Convolutions get Kaiming-uniform (bound sqrt(6 / fan_in)), classifiers Xavier, biases
    zero; a timm encoder keeps timm's own initialisation, bit for bit."""
    torch.manual_seed(0)
    plain = atrous.create_model("deeplab_v3plus", 5, backbone="resnet18", init="none")
    torch.manual_seed(0)
    model = atrous.create_model("deeplab_v3plus", 5, backbone="resnet18")
    for (name, a), b in zip(plain.backbone.state_dict().items(), model.backbone.state_dict().values(), strict=True):
        assert torch.equal(a, b), name
    convs = [m for n, m in model.named_modules() if isinstance(m, torch.nn.Conv2d) and not n.startswith("backbone.")]
    assert convs
    for conv in convs:
        fan_in = conv.in_channels // conv.groups * conv.kernel_size[0] * conv.kernel_size[1]
        if conv.out_channels == 5:  # the classifier: Xavier-uniform
            bound = (6 / (fan_in + 5 * conv.kernel_size[0] * conv.kernel_size[1])) ** 0.5
        else:
            bound = (6 / fan_in) ** 0.5
        assert conv.weight.abs().max() <= bound + 1e-6
        if conv.weight.numel() > 4000:  # a uniform on [-b, b] has std b / sqrt(3)
            assert conv.weight.std().item() == pytest.approx(bound / 3**0.5, rel=0.1)
        assert conv.bias is None or not conv.bias.any()


def test_he_init_keeps_the_papers_own_initialisations() -> None:
    fcn = atrous.create_model("fcn8s", 4, backbone="resnet18", output_stride=32)
    assert all(not s.weight.any() for s in fcn.score_skips)  # FCN's zero score layers
    torch.testing.assert_close(fcn.upsample_skips[0].weight, bilinear_kernel(4, 4))
    v2 = atrous.create_model("deeplab_v2", 4, backbone="resnet18")
    stds = [branch.weight.std().item() for m in v2.modules() if type(m).__name__ == "ASPPSum" for branch in m.branches]
    assert stds and all(s == pytest.approx(0.01, rel=0.1) for s in stds)  # DeepLab v2's N(0, 0.01)


def test_plain_vgg16_learns_signal_only_with_he_init() -> None:
    """The finding behind `init`: through plain VGG16 (no batch norm) PyTorch's default
    initialisation shrinks the signal ~30x and conv1's gradient vanishes."""
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    target = torch.randint(0, 4, (2, 64, 64), generator=torch.Generator().manual_seed(1))
    grads, stds = {}, {}
    for init in ("he", "none"):
        torch.manual_seed(0)
        model = atrous.create_model("fcn32s", 4, init=init)
        stds[init] = model.backbone(x)[-1].std().item()
        F.cross_entropy(model(x), target).backward()
        grads[init] = model.backbone.features[0].weight.grad.norm().item()
    assert stds["he"] > 10 * stds["none"]
    assert grads["he"] > 1000 * grads["none"]
    with pytest.raises(ValueError, match="init must be one of"):
        atrous.create_model("fcn32s", 4, init="xavier")
