"""atrous' flagship models against segmentation_models_pytorch (smp), an independent
implementation: smp's weights are transplanted into the atrous model and the outputs compared
at float32 rounding, on inputs of odd sizes.

How each comparison is made:
- Both models are built in eval mode on a resnet18 encoder with random weights. Every batch
  norm of the reference gets random affine parameters and random running statistics (measured
  on one random batch, then scaled per channel), so that a norm mapped to the wrong place shows.
- The reference's state_dict is mapped onto atrous' by an explicit name mapping (`transplant`):
  every atrous tensor is filled exactly once, shapes must agree, and every smp tensor is used
  exactly once, except those listed by name as having no counterpart in atrous.
- atrous pads the input (zeros, bottom and right) to its divisor and crops the logits back;
  smp's DeepLabV3Plus and PSPNet refuse sizes that are not multiples of their output stride.
  The reference therefore sees the input padded the same way (`pad_like_atrous`, written here
  again, not imported) and its logits are cropped: at odd sizes the maths then coincide.
- Outputs agree when max |atrous - smp| <= 1e-4 * max |smp| + 1e-4 * |smp| (rtol = 1e-4,
  atol = 1e-4 scaled by the output's magnitude).

Differences between atrous and smp that make an exact comparison of the models as each library
builds them by default impossible, each named in the test that shows it:
- U-Net: smp's decoder resizes to each skip's size, so smp runs on odd sizes without padding
  and gives other numbers there (test_unet_smp_unpadded_odd_size_differs).
- DeepLab v3+ (test_deeplabv3plus_smp_layout_differs, test_deeplabv3plus_each_smp_deviation_shows):
  smp dilates the first 3x3 convolution of a stage whose stride it removes (timm, torchvision
  and DeepLab's reference code keep the previous rate there); smp's default ASPP rates at
  output stride 16 are (12, 24, 36), the paper's rates for output stride 8; smp's separable
  convolution has no batch norm and ReLU between the depthwise and the pointwise convolution
  (DeepLab v3+'s reference code and atrous have them); smp adds a 3x3 separable conv-BN-ReLU
  after ASPP and has one 3x3 convolution in the decoder where the paper and atrous have none
  and two; smp's two bilinear upsamplings align corners, atrous' do not; smp's ASPP dropout
  is 0.5, atrous' 0.1 (the same in eval mode).
- PSPNet (test_smp_pspnet_is_not_the_papers): see that test's docstring; only the pyramid
  pooling module and the dilated encoder coincide and are compared apart.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import atrous

WITHOUT_SMP = "segmentation_models_pytorch (the test extra) is not installed: atrous is not compared with smp"
smp = pytest.importorskip("segmentation_models_pytorch", reason=WITHOUT_SMP)
psp_decoder_module = pytest.importorskip("segmentation_models_pytorch.decoders.pspnet.decoder", reason=WITHOUT_SMP)

NUM_CLASSES = 5
SIZES = [(1, 67, 91), (2, 64, 64)]  # (N, H, W): odd sizes, and a multiple of 32
EPS = 1e-5  # nn.BatchNorm2d's, in both libraries


# ---------------------------------------------------------------------------------------------
# helpers


@dataclass(frozen=True)
class Derived:
    """A target tensor computed from one or more source tensors (each counts as used once)."""

    sources: tuple[str, ...]
    build: Callable[..., torch.Tensor]


Spec = str | Derived | torch.Tensor  # copy a source tensor / compute one / a constructed tensor


def transplant(
    target: nn.Module, source: Mapping[str, torch.Tensor], mapping: Mapping[str, Spec], unused: Iterable[str] = ()
) -> None:
    """Load `source` into `target` through `mapping` (target name -> Spec), strictly:
    every target tensor gets a value of its own shape, and every source tensor is used
    exactly once except those named in `unused` (which must exist and must not be used)."""
    own = target.state_dict()
    assert set(mapping) == set(own), (sorted(set(own) - set(mapping))[:5], sorted(set(mapping) - set(own))[:5])
    uses = Counter(
        name
        for spec in mapping.values()
        for name in ((spec,) if isinstance(spec, str) else spec.sources if isinstance(spec, Derived) else ())
    )
    unused = set(unused)
    assert all(count == 1 for count in uses.values()), [n for n, c in uses.items() if c != 1]
    assert not unused & set(uses), sorted(unused & set(uses))
    assert set(uses) | unused == set(source), (
        sorted(set(source) - set(uses) - unused)[:5],
        sorted((set(uses) | unused) - set(source))[:5],
    )
    state = {}
    for name, spec in mapping.items():
        if isinstance(spec, str):
            value = source[spec]
        elif isinstance(spec, Derived):
            value = spec.build(*(source[s] for s in spec.sources))
        else:
            value = spec
        assert value.shape == own[name].shape, (name, tuple(value.shape), tuple(own[name].shape))
        state[name] = value.to(own[name].dtype).clone()
    target.load_state_dict(state, strict=True)


def by_rules(names: Iterable[str], rules: list[tuple[str, str]]) -> dict[str, str]:
    """target name -> source name by the first regular expression that matches it whole."""
    mapping = {}
    for name in names:
        for pattern, replacement in rules:
            if re.fullmatch(pattern, name):
                mapping[name] = re.sub(pattern, replacement, name)
                break
        else:
            raise AssertionError(f"no rule maps {name}")
    return mapping


def randomise_batch_norm(model: nn.Module, sample_shape: tuple[int, ...], seed: int = 0) -> None:
    """Random weight and bias for every batch norm; running statistics measured on one random
    batch (so activations keep their scale through a random network) and then scaled by a
    random factor per channel (so they are no batch's statistics). Leaves `model` in eval."""
    generator = torch.Generator().manual_seed(seed)
    norms = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    for norm in norms:
        norm.momentum = 1.0  # running statistics := this batch's
        norm.weight.data = torch.rand(norm.weight.shape, generator=generator) + 0.5
        norm.bias.data = torch.rand(norm.bias.shape, generator=generator) - 0.5
    model.train()
    with torch.no_grad():
        model(torch.randn(*sample_shape, generator=generator))
    for norm in norms:
        std = norm.running_var.sqrt()
        norm.running_mean += (torch.rand(std.shape, generator=generator) - 0.5) * 0.2 * std
        norm.running_var *= torch.rand(std.shape, generator=generator) * 0.6 + 0.7
    model.eval()


def pad_like_atrous(x: torch.Tensor, divisor: int) -> torch.Tensor:
    """Zeros at the bottom and right up to multiples of `divisor`, as atrous pads its input."""
    return F.pad(x, (0, -x.shape[-1] % divisor, 0, -x.shape[-2] % divisor))


def max_difference(got: torch.Tensor, expected: torch.Tensor) -> float:
    assert got.shape == expected.shape
    return (got - expected).abs().max().item()


def assert_same(got: torch.Tensor, expected: torch.Tensor) -> float:
    """rtol 1e-4 and atol 1e-4 scaled by the reference's magnitude; returns the max difference."""
    scale = expected.abs().max().item()
    assert expected.std() > 1e-2 * scale > 0, "the comparison needs outputs that vary"
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4 * scale)
    return max_difference(got, expected)


def assert_differs(got: torch.Tensor, expected: torch.Tensor) -> float:
    """The two differ well beyond the tolerance of `assert_same` (1e-2 of the magnitude)."""
    difference = max_difference(got, expected)
    assert difference > 1e-2 * expected.abs().max().item(), difference
    return difference


def identity_norm(channels: int) -> dict[str, torch.Tensor]:
    """The tensors of a batch norm that, in eval mode, passes its input through."""
    return {
        "weight": torch.ones(channels),
        "bias": torch.zeros(channels),
        "running_mean": torch.zeros(channels),
        "running_var": torch.full((channels,), 1.0 - EPS),
        "num_batches_tracked": torch.tensor(0),
    }


def delta_kernel(out_channels: int, in_channels: int, size: int) -> torch.Tensor:
    """(out, in, size, size): output channel i copies input channel i (in_channels == 1:
    depthwise, groups = out), through the centre tap only."""
    kernel = torch.zeros(out_channels, in_channels, size, size)
    kernel[range(out_channels), range(out_channels) if in_channels > 1 else 0, size // 2, size // 2] = 1.0
    return kernel


# ---------------------------------------------------------------------------------------------
# U-Net

# atrous name -> smp name. timm's features_only ResNet and torchvision's ResNet (smp's encoder)
# name their tensors alike; atrous' decoder block is one Sequential (conv, BN, ReLU, conv, BN,
# ReLU), smp's two Conv2dReLU (conv, BN, ReLU).
UNET_RULES = [
    (r"encoder\.body\.(.+)", r"encoder.\1"),
    (r"blocks\.(\d)\.conv\.0\.(.+)", r"decoder.blocks.\1.conv1.0.\2"),
    (r"blocks\.(\d)\.conv\.1\.(.+)", r"decoder.blocks.\1.conv1.1.\2"),
    (r"blocks\.(\d)\.conv\.3\.(.+)", r"decoder.blocks.\1.conv2.0.\2"),
    (r"blocks\.(\d)\.conv\.4\.(.+)", r"decoder.blocks.\1.conv2.1.\2"),
    (r"classifier\.(.+)", r"segmentation_head.0.\1"),
]


def unet_pair() -> tuple[nn.Module, nn.Module]:
    """smp's Unet (resnet18, decoder (256, 128, 64, 32, 16), BN, nearest upsampling, 3x3 head)
    and atrous' encoder U-Net with smp's weights."""
    torch.manual_seed(0)
    reference = smp.Unet(encoder_name="resnet18", encoder_weights=None, classes=NUM_CLASSES)
    randomise_batch_norm(reference, (2, 3, 64, 64))
    model = atrous.create_model("unet", NUM_CLASSES, backbone="resnet18", decoder_channels=(256, 128, 64, 32, 16))
    transplant(model, reference.state_dict(), by_rules(model.state_dict(), UNET_RULES))
    return model.eval(), reference.eval()


def test_unet_matches_smp_unet() -> None:
    """atrous' U-Net on a timm resnet18 == smp's Unet on torchvision's resnet18, at odd sizes
    (smp given the input padded to 32 as atrous pads it) and at a multiple of 32."""
    model, reference = unet_pair()
    for n, h, w in SIZES:
        x = torch.randn(n, 3, h, w)
        with torch.no_grad():
            expected = reference(pad_like_atrous(x, 32))[..., :h, :w]
            got = model(x)
        assert_same(got, expected)


def test_unet_smp_unpadded_odd_size_differs() -> None:
    """A difference, not a bug: smp's Unet takes any size without padding (its decoder resizes
    to each skip's size, its encoder rounds strides up), atrous pads to 32 and crops. At an odd
    size the two give different logits although the weights are the same."""
    model, reference = unet_pair()
    x = torch.randn(1, 3, 67, 91)
    with torch.no_grad():
        unpadded = reference(x)
        padded = reference(pad_like_atrous(x, 32))[..., :67, :91]
        got = model(x)
    assert unpadded.shape == got.shape
    assert_same(got, padded)
    assert_differs(got, unpadded)


# ---------------------------------------------------------------------------------------------
# DeepLab v3+


def smp_deeplabv3plus(output_stride: int) -> nn.Module:
    """smp's DeepLabV3Plus at `output_stride` with the paper's ASPP rates (smp's default at 8;
    at 16 smp's default is (12, 24, 36), given here as (6, 12, 18)); separable ASPP (smp's
    default); BN randomised."""
    torch.manual_seed(0)
    rates = {16: (6, 12, 18), 8: (12, 24, 36)}[output_stride]
    reference = smp.DeepLabV3Plus(
        encoder_name="resnet18",
        encoder_weights=None,
        classes=NUM_CLASSES,
        encoder_output_stride=output_stride,
        decoder_atrous_rates=rates,
    )
    randomise_batch_norm(reference, (2, 3, 64, 64))
    return reference


def keep_previous_rate_at_stage_entries(encoder: nn.Module, output_stride: int) -> None:
    """Undo smp's one encoder difference: where smp turns a stage's stride into dilation, it
    dilates the stage's first 3x3 convolution too; timm, torchvision and DeepLab's reference
    code keep the previous stage's rate there."""
    previous_rate = {16: {"layer4": 1}, 8: {"layer3": 1, "layer4": 2}}[output_stride]
    for stage, rate in previous_rate.items():
        conv = getattr(encoder, stage)[0].conv1
        assert conv.dilation != (rate, rate), "smp no longer dilates the stage entry: update this test"
        conv.dilation, conv.padding = (rate, rate), (rate, rate)


def smp_separable_as_identity(separable: nn.Sequential, norm: nn.BatchNorm2d) -> None:
    """smp's SeparableConv2d (depthwise, pointwise) + BN as the identity on inputs >= 0."""
    channels = norm.num_features
    with torch.no_grad():
        separable[0].weight.copy_(delta_kernel(channels, 1, 3))
        separable[1].weight.copy_(delta_kernel(channels, channels, 1))
        for key, value in identity_norm(channels).items():
            getattr(norm, key).copy_(value)


def depthwise_minima(reference: nn.Module, inputs: list[torch.Tensor]) -> dict[str, torch.Tensor]:
    """Per channel, the least output of each separable depthwise conv of smp's ASPP and decoder
    over `inputs` (keys: the conv's name in smp's state_dict, without ".weight")."""
    names = [f"decoder.aspp.0.convs.{i}.0.0" for i in (1, 2, 3)] + ["decoder.block2.0.0"]
    minima: dict[str, torch.Tensor] = {}

    def hook(name: str) -> Callable[..., None]:
        def record(_module: nn.Module, _inputs: object, output: torch.Tensor) -> None:
            least = output.amin(dim=(0, 2, 3))
            minima[name] = torch.minimum(minima[name], least) if name in minima else least

        return record

    handles = [reference.get_submodule(name).register_forward_hook(hook(name)) for name in names]
    try:
        with torch.no_grad():
            for x in inputs:
                reference(x)
    finally:
        for handle in handles:
            handle.remove()
    return minima


def separable_mapping(
    atrous_prefix: str,
    smp_separable: str,
    smp_norm: str,
    source: Mapping[str, torch.Tensor],
    separable: bool,
    shift: torch.Tensor | None,
) -> dict[str, Spec]:
    """atrous' conv_bn_relu(3x3) <- smp's SeparableConv2d (depthwise, pointwise; no norm or
    ReLU between) + BN.

    separable=False: atrous' dense 3x3 conv is the product of the two (depthwise then pointwise
    with nothing between is one convolution: W[o, i] = P[o, i] * D[i]).
    separable=True: atrous' SeparableConv2d has BN + ReLU between depthwise and pointwise (as
    DeepLab v3+'s reference code). That inner BN is set to pass its input on shifted by `shift`
    (per channel, large enough that the ReLU after it never clips on the test inputs: see
    depthwise_minima), and the outer BN's mean takes the shift back (+ P @ shift); with
    shift=None the inner BN is the identity and the inner ReLU clips (the real difference).
    """
    dw, pw = f"{smp_separable}.0.weight", f"{smp_separable}.1.weight"
    norm = {key: f"{smp_norm}.{key}" for key in identity_norm(1)}
    if not separable:
        compose = Derived((pw, dw), lambda p, d: p[:, :, 0, 0, None, None] * d[None, :, 0])
        return {f"{atrous_prefix}.0.weight": compose} | {f"{atrous_prefix}.1.{k}": v for k, v in norm.items()}
    inner = identity_norm(source[dw].shape[0])
    if shift is not None:
        inner["bias"] = shift.clone()
    mapping: dict[str, Spec] = {f"{atrous_prefix}.0.weight": dw, f"{atrous_prefix}.3.weight": pw}
    mapping |= {f"{atrous_prefix}.1.{k}": v for k, v in inner.items()}
    mapping |= {f"{atrous_prefix}.4.{k}": v for k, v in norm.items()}
    bias = inner["bias"]
    mapping[f"{atrous_prefix}.4.running_mean"] = Derived(
        (norm["running_mean"], pw + "#shift"), lambda mean, p: mean + p[:, :, 0, 0] @ bias
    )
    return mapping


def deeplabv3plus_mapping(
    model: nn.Module, source: Mapping[str, torch.Tensor], separable: bool, shifts: Mapping[str, torch.Tensor] | None
) -> dict[str, Spec]:
    """atrous' DeepLabV3Plus name -> smp's. Encoder: same names under backbone.body / encoder.
    ASPP: branches.0 (1x1) <- convs.0; branches.1-3 (3x3 at the rates) <- convs.1-3 (separable,
    see separable_mapping); branches.4 (image pooling: pool, conv-BN-ReLU) <- convs.4 (pool,
    conv, BN, ReLU); project.0 <- project. Decoder: project (1x1 to 48) <- block1; fuse.0 (3x3)
    <- block2 (separable); fuse.1 (atrous' second 3x3, smp has none) <- the identity.
    classifier <- segmentation_head.0."""
    mapping: dict[str, Spec] = {}
    for name in model.state_dict():
        if name.startswith("backbone.body."):
            mapping[name] = "encoder." + name.removeprefix("backbone.body.")
    rules = [
        (r"aspp\.branches\.0\.(.+)", r"decoder.aspp.0.convs.0.\1"),
        (r"aspp\.branches\.4\.1\.0\.(.+)", r"decoder.aspp.0.convs.4.1.\1"),
        (r"aspp\.branches\.4\.1\.1\.(.+)", r"decoder.aspp.0.convs.4.2.\1"),
        (r"aspp\.project\.0\.0\.(.+)", r"decoder.aspp.0.project.0.\1"),
        (r"aspp\.project\.0\.1\.(.+)", r"decoder.aspp.0.project.1.\1"),
        (r"decoder\.project\.(.+)", r"decoder.block1.\1"),
        (r"classifier\.(.+)", r"segmentation_head.0.\1"),
    ]
    plain = [n for n in model.state_dict() if any(re.fullmatch(p, n) for p, _ in rules)]
    mapping |= by_rules(plain, rules)
    for i in (1, 2, 3):
        smp_conv = f"decoder.aspp.0.convs.{i}"
        shift = shifts[f"{smp_conv}.0.0"] if shifts else None
        mapping |= separable_mapping(f"aspp.branches.{i}", f"{smp_conv}.0", f"{smp_conv}.1", source, separable, shift)
    shift = shifts["decoder.block2.0.0"] if shifts else None
    mapping |= separable_mapping("decoder.fuse.0", "decoder.block2.0", "decoder.block2.1", source, separable, shift)
    mapping |= identity_conv_bn_relu("decoder.fuse.1", 256, separable)
    return mapping


def identity_conv_bn_relu(prefix: str, channels: int, separable: bool) -> dict[str, Spec]:
    """atrous' conv_bn_relu(channels, channels, 3) as the identity on inputs >= 0."""
    norm = identity_norm(channels)
    if not separable:
        return {f"{prefix}.0.weight": delta_kernel(channels, channels, 3)} | {
            f"{prefix}.1.{k}": v for k, v in norm.items()
        }
    return (
        {f"{prefix}.0.weight": delta_kernel(channels, 1, 3), f"{prefix}.3.weight": delta_kernel(channels, channels, 1)}
        | {f"{prefix}.1.{k}": v for k, v in identity_norm(channels).items()}
        | {f"{prefix}.4.{k}": v for k, v in norm.items()}
    )


# smp's tensors with no counterpart in atrous: the 3x3 separable conv-BN after ASPP
SMP_DEEPLAB_EXTRA = {
    "decoder.aspp.1.0.weight",
    "decoder.aspp.1.1.weight",
    *(f"decoder.aspp.2.{key}" for key in identity_norm(1)),
}


def with_shift_sources(source: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The pointwise weights are read twice when atrous is separable (the pointwise conv, and
    the outer BN's mean correction): the second read goes through an alias "<name>#shift" so
    that `transplant` still sees every name used exactly once."""
    aliased = dict(source)
    for name, value in source.items():
        if re.fullmatch(r"decoder\.(aspp\.0\.convs\.\d\.0|block2\.0)\.1\.weight", name):
            aliased[name + "#shift"] = value
    return aliased


def deeplabv3plus_pair(
    output_stride: int, separable: bool, keep: tuple[str, ...] = ()
) -> tuple[nn.Module, nn.Module, list[torch.Tensor]]:
    """smp's DeepLabV3Plus with its deviations undone (except those named in `keep`), atrous'
    DeepLab v3+ configured as smp (resnet18 without multi-grid, smp's output stride and rates,
    decoder widths 256 / 48, ASPP dropout 0.5) carrying its weights, and the test inputs.

    Deviations of smp undone: "entry_dilation" (keep_previous_rate_at_stage_entries),
    "align_corners" (smp's two bilinear upsamplings set to align_corners=False), "extra_conv"
    (smp's 3x3 separable conv-BN after ASPP made the identity), "inner_relu" (atrous' BN + ReLU
    between depthwise and pointwise made inactive, separable=True only)."""
    reference = smp_deeplabv3plus(output_stride)
    if "entry_dilation" not in keep:
        keep_previous_rate_at_stage_entries(reference.encoder, output_stride)
    if "align_corners" not in keep:
        reference.decoder.up.align_corners = False
        reference.segmentation_head[1].align_corners = False
    if "extra_conv" not in keep:
        smp_separable_as_identity(reference.decoder.aspp[1], reference.decoder.aspp[2])
    generator = torch.Generator().manual_seed(2)
    inputs = [torch.randn(n, 3, h, w, generator=generator) for n, h, w in SIZES]
    shifts = None
    if separable and "inner_relu" not in keep:
        minima = depthwise_minima(reference, [pad_like_atrous(x, output_stride) for x in inputs])
        shifts = {name: (-least).clamp(min=0) + 1.0 for name, least in minima.items()}
    model = atrous.create_model(
        "deeplab_v3plus",
        NUM_CLASSES,
        backbone="resnet18",
        output_stride=output_stride,
        multi_grid=None,
        separable=separable,
        aspp_dropout=0.5,
    )
    source = with_shift_sources(reference.state_dict()) if separable else reference.state_dict()
    transplant(model, source, deeplabv3plus_mapping(model, source, separable, shifts), unused=SMP_DEEPLAB_EXTRA)
    return model.eval(), reference.eval(), inputs


def outputs(model: nn.Module, reference: nn.Module, x: torch.Tensor, divisor: int) -> tuple[torch.Tensor, ...]:
    with torch.no_grad():
        return model(x), reference(pad_like_atrous(x, divisor))[..., : x.shape[-2], : x.shape[-1]]


@pytest.mark.parametrize("output_stride, separable", [(16, True), (8, True), (16, False), (8, False)])
def test_deeplabv3plus_matches_smp(output_stride: int, separable: bool) -> None:
    """atrous' DeepLab v3+ == smp's DeepLabV3Plus once smp's deviations from the paper are
    undone (see deeplabv3plus_pair): resnet18 at output stride 16 (ASPP rates 6, 12, 18) and
    8 (12, 24, 36), the 48-channel low-level projection, 256-channel decoder.

    smp's separable convolutions go into atrous built both ways: separable=False (dense 3x3 =
    depthwise x pointwise, exactly smp's maths) and separable=True (atrous' own separable
    convolution, its inner BN + ReLU made inactive; see separable_mapping)."""
    model, reference, inputs = deeplabv3plus_pair(output_stride, separable)
    for x in inputs:
        assert_same(*outputs(model, reference, x, output_stride))


@pytest.mark.parametrize(
    "keep, separable", [("entry_dilation", False), ("align_corners", False), ("extra_conv", False), ("inner_relu", True)]
)
def test_deeplabv3plus_each_smp_deviation_shows(keep: str, separable: bool) -> None:
    """Each deviation that deeplabv3plus_pair undoes matters: left in place, the outputs differ
    by far more than the tolerance (so the comparison above would catch it). "inner_relu":
    atrous' separable convolution has BN + ReLU between depthwise and pointwise (DeepLab v3+'s
    reference code), smp's has not; with that inner BN the identity, the ReLU alone changes
    the output."""
    model, reference, inputs = deeplabv3plus_pair(16, separable, keep=(keep,))
    assert_differs(*outputs(model, reference, inputs[0], 16))


def test_deeplabv3plus_smp_layout_differs() -> None:
    """The layout of smp's default DeepLabV3Plus against atrous' (the paper's), as the tests
    above undo it: smp's rates at output stride 16, its dilated stage entry, its bilinear
    upsamplings with aligned corners, its extra 3x3 conv after ASPP, its single 3x3 conv in the
    decoder, its separable conv without inner norm, its ASPP dropout."""
    reference = smp.DeepLabV3Plus(encoder_name="resnet18", encoder_weights=None, classes=NUM_CLASSES)
    model = atrous.create_model(
        "deeplab_v3plus", NUM_CLASSES, backbone="resnet18", separable=True, multi_grid=None
    )
    smp_rates = [reference.decoder.aspp[0].convs[i][0][0].dilation[0] for i in (1, 2, 3)]
    atrous_rates = [model.aspp.branches[i][0].dilation[0] for i in (1, 2, 3)]
    assert (smp_rates, atrous_rates) == ([12, 24, 36], [6, 12, 18])
    assert reference.encoder.layer4[0].conv1.dilation == (2, 2)
    assert model.backbone.body.layer4[0].conv1.dilation == (1, 1)
    assert reference.decoder.up.align_corners and reference.segmentation_head[1].align_corners
    assert len(reference.decoder.aspp) == 4  # ASPP, separable 3x3, BN, ReLU
    assert len(reference.decoder.block2) == 3 and len(model.decoder.fuse) == 2  # one 3x3 vs two
    assert [type(m).__name__ for m in reference.decoder.block2[0]] == ["Conv2d", "Conv2d"]
    assert [type(m).__name__ for m in model.decoder.fuse[0]] == [
        "Conv2d", "BatchNorm2d", "ReLU", "Conv2d", "BatchNorm2d", "ReLU",
    ]
    assert reference.decoder.aspp[0].project[3].p == 0.5 and model.aspp.project[1].p == 0.1


# ---------------------------------------------------------------------------------------------
# PSPNet


def force_align_corners_false(monkeypatch: pytest.MonkeyPatch) -> None:
    """smp's PSPBlock upsamples with align_corners=True, written in its forward; atrous (and
    torchvision) use False. This replaces F in smp's PSPNet decoder module for one test."""

    class Functional:
        def __getattr__(self, name: str) -> object:
            return getattr(F, name)

        @staticmethod
        def interpolate(*args: object, **kwargs: object) -> torch.Tensor:
            if kwargs.get("mode") == "bilinear":
                kwargs["align_corners"] = False
            return F.interpolate(*args, **kwargs)

    monkeypatch.setattr(psp_decoder_module, "F", Functional())


def pyramid_mapping(channels: int, source_prefix: str, target_prefix: str = "") -> dict[str, Spec]:
    """atrous' PyramidPooling <- smp's PSPModule, bins (1, 2, 3, 6) in the same order.
    stages.j.1 (conv, BN, ReLU) <- blocks.j.pool.1 (conv, norm, ReLU); smp's bin-1 branch has
    no norm and a conv bias (batch norm on a 1x1 map fails in training with batch 1): atrous'
    BN there takes that bias, with identity statistics."""
    reduced = channels // 4
    mapping: dict[str, Spec] = {}
    for j in range(4):
        src, dst = f"{source_prefix}blocks.{j}.pool.1", f"{target_prefix}stages.{j}.1"
        mapping[f"{dst}.0.weight"] = f"{src}.0.weight"
        if j == 0:
            norm: dict[str, Spec] = dict(identity_norm(reduced))
            norm["bias"] = f"{src}.0.bias"
        else:
            norm = {key: f"{src}.1.{key}" for key in identity_norm(1)}
        mapping |= {f"{dst}.1.{k}": v for k, v in norm.items()}
    return mapping


def atrous_order(smp_pyramid_output: torch.Tensor, channels: int) -> torch.Tensor:
    """smp concatenates (bin 1, 2, 3, 6, input); atrous and the paper's Fig. 3 (input, bins)."""
    return torch.cat([smp_pyramid_output[:, -channels:], smp_pyramid_output[:, :-channels]], dim=1)


def pyramid_pair(channels: int) -> tuple[nn.Module, nn.Module]:
    torch.manual_seed(0)
    reference = psp_decoder_module.PSPModule(channels, sizes=(1, 2, 3, 6))
    randomise_batch_norm(reference, (2, channels, 12, 12))
    pyramid = atrous.layers.PyramidPooling(channels, (1, 2, 3, 6))
    transplant(pyramid, reference.state_dict(), pyramid_mapping(channels, ""))
    return pyramid.eval(), reference.eval()


@pytest.mark.parametrize("shape", [(2, 64, 9, 13), (1, 64, 5, 7), (1, 64, 12, 12)])
def test_pyramid_pooling_matches_smp(shape: tuple[int, ...], monkeypatch: pytest.MonkeyPatch) -> None:
    """atrous' PyramidPooling (pooling as region-mean matrix products) == smp's PSPModule
    (nn.AdaptiveAvgPool2d), channels reordered, on feature maps of odd sizes, with fewer rows
    than bins too, once smp's upsampling is made align_corners=False (atrous' choice)."""
    pyramid, reference = pyramid_pair(shape[1])
    force_align_corners_false(monkeypatch)
    x = torch.randn(*shape)
    with torch.no_grad():
        assert_same(pyramid(x), atrous_order(reference(x), shape[1]))


def test_pyramid_pooling_smp_aligns_corners() -> None:
    """The one difference left in the pyramid: smp upsamples the pooled maps with
    align_corners=True. The input's channels and the bin-1 branch (a constant map either way)
    agree; the bin 2, 3 and 6 branches differ."""
    pyramid, reference = pyramid_pair(64)
    x = torch.randn(2, 64, 9, 13)
    with torch.no_grad():
        got, expected = pyramid(x), atrous_order(reference(x), 64)
    assert_same(got[:, : 64 + 16], expected[:, : 64 + 16])  # input, bin 1
    for j in (1, 2, 3):
        branch = slice(64 + 16 * j, 64 + 16 * (j + 1))
        assert_differs(got[:, branch], expected[:, branch])


def test_pspnet_features_match_smp_dilated_encoder(monkeypatch: pytest.MonkeyPatch) -> None:
    """The part of PSPNet where atrous and smp can be made to coincide, end to end up to the
    head: atrous' PSPNet backbone (resnet18 dilated to output stride 8) and pyramid, against
    smp's ResNet encoder dilated to 8 by smp's own `make_dilated` (stage entries kept at the
    previous rate, see keep_previous_rate_at_stage_entries) and smp's pyramid, on the input
    padded to 8. Not transplanted: the heads, which differ (test_smp_pspnet_is_not_the_papers)."""
    torch.manual_seed(0)
    reference = smp.PSPNet(encoder_name="resnet18", encoder_weights=None, classes=NUM_CLASSES, encoder_depth=5)
    reference.encoder.make_dilated(8)
    keep_previous_rate_at_stage_entries(reference.encoder, 8)
    randomise_batch_norm(reference, (2, 3, 64, 64))
    model = atrous.create_model("pspnet", NUM_CLASSES, backbone="resnet18").eval()
    parts = nn.ModuleDict({"backbone": model.backbone, "pyramid": model.pyramid})
    mapping: dict[str, Spec] = {
        name: "encoder." + name.removeprefix("backbone.body.")
        for name in parts.state_dict()
        if name.startswith("backbone.")
    }
    mapping |= pyramid_mapping(512, "decoder.psp.", "pyramid.")
    head = {n for n in reference.state_dict() if n.startswith(("decoder.conv.", "segmentation_head."))}
    transplant(parts, reference.state_dict(), mapping, unused=head)
    force_align_corners_false(monkeypatch)
    for n, h, w in SIZES:
        x = pad_like_atrous(torch.randn(n, 3, h, w), 8)
        with torch.no_grad():
            got = model.pyramid(model.backbone(x)[-1])
            expected = atrous_order(reference.decoder.psp(reference.encoder(x)[-1]), 512)
        assert_same(got, expected)


def test_smp_pspnet_is_not_the_papers() -> None:
    """smp's PSPNet differs from the paper's, which atrous builds, so the whole models cannot
    be compared:
    - encoder: smp keeps `encoder_depth=3` stages (ResNet up to layer2, stride 8, undilated, 128
      channels on resnet18) where the paper dilates the whole ResNet to stride 8 (512 channels);
      asked for depth 5, smp's PSPNet has no output stride option (stride 32);
    - head: smp has 1x1 conv-BN-ReLU (512) -> Dropout2d(0.2) -> 3x3 classifier; the paper's
      reference code (and atrous) 3x3 conv-BN-ReLU (512) -> dropout 0.1 -> 1x1 classifier;
    - smp's bin-1 branch has no batch norm; upsampling aligns corners (pyramid and the final
      x8); smp concatenates the pooled maps before the input; no auxiliary head (atrous: 0.4).
    """
    reference = smp.PSPNet(encoder_name="resnet18", encoder_weights=None, classes=NUM_CLASSES)
    model = atrous.create_model("pspnet", NUM_CLASSES, backbone="resnet18")
    assert reference.encoder.out_channels[-1] == 128 and reference.encoder.output_stride == 8
    assert all(m.dilation == (1, 1) for m in reference.encoder.modules() if isinstance(m, nn.Conv2d))
    assert model.backbone.channels[-1] == 512 and model.backbone.output_stride == 8
    assert model.backbone.body.layer4[1].conv1.dilation == (4, 4)
    assert smp.PSPNet(encoder_name="resnet18", encoder_weights=None, encoder_depth=5).encoder.output_stride == 32
    assert reference.decoder.conv[0].kernel_size == (1, 1) and reference.segmentation_head[0].kernel_size == (3, 3)
    assert model.head[0].kernel_size == (3, 3) and model.head[4].kernel_size == (1, 1)
    assert isinstance(reference.decoder.dropout, nn.Dropout2d) and reference.decoder.dropout.p == 0.2
    assert model.head[3].p == 0.1
    assert isinstance(reference.decoder.psp.blocks[0].pool[1][1], nn.Identity)
    assert isinstance(model.pyramid.stages[0][1][1], nn.BatchNorm2d)
    assert reference.segmentation_head[1].align_corners
    assert reference.classification_head is None and model.aux_weights == {"aux": 0.4}
