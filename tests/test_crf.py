"""DenseCRF (permutohedral and exact), ConvCRF, fitting and configs. Small inputs only."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from atrous.crf import (
    DENSE_PRESETS,
    ConvCRF,
    DenseCRF,
    ExactGaussianFilter,
    PermutohedralLattice,
    crf_from_config,
    dense_crf_preset,
    fit_crf,
    pixel_features,
)


def scene(h: int, w: int, batch: int = 1, seed: int = 0) -> torch.Tensor:
    """Piecewise-constant colour regions plus noise: (batch, 3, h, w) in [0, 255]."""
    g = torch.Generator().manual_seed(seed)
    img = torch.zeros(batch, 3, h, w)
    img[:, :, : h // 2] = torch.tensor([200.0, 60, 40])[:, None, None]
    img[:, :, h // 2 :] = torch.tensor([30.0, 90, 180])[:, None, None]
    img[:, :, :, w // 3 : 2 * w // 3] += torch.tensor([0.0, 80, 0])[:, None, None]
    return (img + torch.randn(img.shape, generator=g) * 8).clamp(0, 255).round()


def noisy_logits(image: torch.Tensor, classes: int, seed: int = 0) -> torch.Tensor:
    """Logits that favour the scene's regions, corrupted by noise."""
    g = torch.Generator().manual_seed(seed)
    n, _, h, w = image.shape
    labels = region_labels(n, h, w) % classes
    onehot = torch.nn.functional.one_hot(labels, classes).permute(0, 3, 1, 2).float()
    return 2.0 * onehot + 1.5 * torch.randn(n, classes, h, w, generator=g)


def region_labels(n: int, h: int, w: int) -> torch.Tensor:
    labels = torch.zeros(n, h, w, dtype=torch.long)
    labels[:, h // 2 :] = 1
    labels[:, :, w // 3 : 2 * w // 3] += 2
    return labels


# -- filters -----------------------------------------------------------------------------

# Documented tolerance of the lattice against the exact Gaussian filter (symmetrically
# normalised, as the CRF uses it) on natural-looking images: mean relative error <= 5%,
# max relative error <= 15% (measured ~1-2% and 4-8%).
@pytest.mark.parametrize("xy_std,rgb_std", [(3.0, None), (2.0, None), (80.0, 13.0)])
def test_lattice_matches_exact_filter(xy_std, rgb_std):
    image = scene(24, 32)
    features = pixel_features(image, xy_std, rgb_std)
    lattice, exact = PermutohedralLattice(features), ExactGaussianFilter(features)
    ones = torch.ones(1, features.shape[1], 1)
    norm_l = torch.rsqrt(lattice.filter(ones))
    norm_e = torch.rsqrt(exact.filter(ones))
    values = torch.rand(1, features.shape[1], 4, generator=torch.Generator().manual_seed(1))
    a = lattice.filter(values, norm_l, norm_l)
    b = exact.filter(values, norm_e, norm_e)
    assert (a - b).abs().mean() / b.abs().mean() < 0.05
    assert (a - b).abs().max() / b.abs().max() < 0.15


def test_lattice_batch_is_independent():
    images = torch.cat([scene(12, 14, seed=0), scene(12, 14, seed=1) * 0.5])
    features = pixel_features(images, 4.0, 10.0)
    values = torch.rand(2, 12 * 14, 3)
    together = PermutohedralLattice(features).filter(values)
    for i in range(2):
        alone = PermutohedralLattice(features[i : i + 1]).filter(values[i : i + 1])
        torch.testing.assert_close(together[i : i + 1], alone, rtol=1e-5, atol=1e-5)


def test_lattice_filter_is_linear():
    # (densecrf's blur runs the directions in a fixed order, so K is only nearly symmetric)
    features = pixel_features(scene(10, 12), 3.0, 20.0)
    lattice = PermutohedralLattice(features)
    u, v = torch.rand(2, 1, 120, 2, dtype=torch.float64)
    torch.testing.assert_close(
        lattice.filter(2 * u - 3 * v), 2 * lattice.filter(u) - 3 * lattice.filter(v)
    )


# -- DenseCRF ----------------------------------------------------------------------------


def test_dense_permutohedral_agrees_with_exact():
    image = scene(20, 24)
    logits = noisy_logits(image, 4)
    fast = DenseCRF(num_iterations=5)(logits, image)
    exact = DenseCRF(num_iterations=5, method="exact")(logits, image)
    agree = (fast.argmax(1) == exact.argmax(1)).float().mean()
    assert agree >= 0.99
    assert (fast.exp() - exact.exp()).abs().mean() < 0.01


def test_dense_output_is_log_q_and_smooths():
    image = scene(20, 24)
    logits = noisy_logits(image, 4)
    log_q = DenseCRF()(logits, image)
    assert log_q.shape == logits.shape
    torch.testing.assert_close(log_q.exp().sum(1), torch.ones(1, 20, 24))
    truth = region_labels(1, 20, 24)
    assert (log_q.argmax(1) == truth).float().mean() > (logits.argmax(1) == truth).float().mean()


def test_dense_zero_iterations_is_log_softmax():
    image, logits = scene(6, 7), torch.randn(1, 3, 6, 7)
    out = DenseCRF(num_iterations=0)(logits, image)
    torch.testing.assert_close(out, torch.log_softmax(logits, 1))


def test_dense_batched_equals_single():
    images = torch.cat([scene(10, 12, seed=0), scene(10, 12, seed=3)])
    logits = noisy_logits(images, 3)
    crf = DenseCRF(num_iterations=3)
    together = crf(logits, images)
    for i in range(2):
        torch.testing.assert_close(
            together[i : i + 1], crf(logits[i : i + 1], images[i : i + 1]), rtol=1e-4, atol=1e-4
        )


@pytest.mark.parametrize("method", ["permutohedral", "exact"])
@pytest.mark.parametrize("compatibility", ["potts", "matrix"])
def test_dense_gradcheck(method, compatibility):
    torch.manual_seed(0)
    image = scene(3, 4).double()
    crf = DenseCRF(
        num_iterations=2, pos_xy_std=2, bi_xy_std=3, bi_rgb_std=30, method=method,
        compatibility=compatibility, num_classes=3,
    ).double()
    logits = torch.randn(1, 3, 3, 4, dtype=torch.float64, requires_grad=True)
    names = ["pos_w", "bi_w"] + (["compat"] if compatibility == "matrix" else [])
    params = [getattr(crf, name) for name in names]

    def functional(x, *p):
        return torch.func.functional_call(crf, dict(zip(names, p, strict=True)), (x, image))

    inputs = (logits, *[p.detach().clone().requires_grad_(True) for p in params])
    assert torch.autograd.gradcheck(functional, inputs, eps=1e-6, atol=1e-5, fast_mode=True)


def test_dense_presets_and_config_roundtrip():
    assert set(DENSE_PRESETS) == {"deeplab", "pydensecrf"}
    crf = dense_crf_preset("deeplab")
    assert crf.config()["bi_xy_std"] == DENSE_PRESETS["deeplab"]["bi_xy_std"]
    rebuilt = crf_from_config(crf.config())
    assert isinstance(rebuilt, DenseCRF) and rebuilt.config() == crf.config()
    rebuilt.load_state_dict(crf.state_dict())
    with pytest.raises(ValueError, match="preset"):
        dense_crf_preset("nope")


def test_dense_rejects_bad_inputs():
    crf = DenseCRF()
    with pytest.raises(ValueError, match="does not match"):
        crf(torch.randn(1, 3, 5, 5), torch.rand(1, 3, 5, 6))
    with pytest.raises(ValueError, match="3 channels"):
        crf(torch.randn(1, 3, 5, 5), torch.rand(1, 1, 5, 5))
    with pytest.raises(ValueError, match="num_classes"):
        DenseCRF(compatibility="matrix")


def test_dense_matches_pydensecrf():
    dcrf = pytest.importorskip("pydensecrf.densecrf")
    image = scene(40, 56)
    logits = noisy_logits(image, 4)
    with torch.no_grad():
        ours = DenseCRF()(logits, image)[0]
    unary = -torch.log_softmax(logits[0], 0).reshape(4, -1).numpy()
    rgb = np.ascontiguousarray(image[0].permute(1, 2, 0).numpy().astype(np.uint8))
    d = dcrf.DenseCRF2D(56, 40, 4)
    d.setUnaryEnergy(np.ascontiguousarray(unary, dtype=np.float32))
    d.addPairwiseGaussian(sxy=3, compat=3)
    d.addPairwiseBilateral(sxy=80, srgb=13, rgbim=rgb, compat=10)
    q = np.array(d.inference(10)).reshape(4, 40, 56)
    assert (ours.argmax(0).numpy() == q.argmax(0)).mean() >= 0.99
    assert np.abs(ours.exp().numpy() - q).max() < 1e-3


# -- ConvCRF -----------------------------------------------------------------------------


def test_conv_with_full_window_equals_exact_dense():
    image = scene(9, 11, batch=2).double()
    logits = torch.randn(2, 4, 9, 11, dtype=torch.float64)
    conv = ConvCRF(num_iterations=4, filter_size=23, blur=1).double()(logits, image)
    dense = DenseCRF(num_iterations=4, method="exact").double()(logits, image)
    torch.testing.assert_close(conv, dense)


def test_conv_defaults_shapes_and_smoothing():
    crf = ConvCRF()
    assert (crf.filter_size, crf.blur) == (7, 4)
    image = scene(30, 37)  # not a multiple of blur
    logits = noisy_logits(image, 4)
    log_q = crf(logits, image)
    assert log_q.shape == logits.shape
    truth = region_labels(1, 30, 37)
    assert (log_q.argmax(1) == truth).float().mean() > (logits.argmax(1) == truth).float().mean()


@pytest.mark.parametrize("blur", [1, 2])
def test_conv_gradcheck_all_parameters(blur):
    torch.manual_seed(0)
    image = scene(5, 6).double()
    crf = ConvCRF(
        num_iterations=2, filter_size=3, blur=blur, pos_xy_std=2, bi_xy_std=3, bi_rgb_std=30,
        compatibility="matrix", num_classes=3, trainable_kernels=True,
    ).double()
    names = [name for name, _ in crf.named_parameters()]
    assert set(names) == {"pos_xy_std", "bi_xy_std", "bi_rgb_std", "pos_w", "bi_w", "compat"}
    logits = torch.randn(1, 3, 5, 6, dtype=torch.float64, requires_grad=True)
    params = [p.detach().clone().requires_grad_(True) for _, p in crf.named_parameters()]

    def functional(x, *p):
        return torch.func.functional_call(crf, dict(zip(names, p, strict=True)), (x, image))

    assert torch.autograd.gradcheck(
        functional, (logits, *params), eps=1e-6, atol=1e-5, fast_mode=True
    )


def test_conv_config_roundtrip():
    crf = ConvCRF(compatibility="matrix", num_classes=5, trainable_kernels=True)
    rebuilt = crf_from_config(crf.config())
    assert isinstance(rebuilt, ConvCRF) and rebuilt.config() == crf.config()
    rebuilt.load_state_dict(crf.state_dict())
    with pytest.raises(ValueError, match="kind"):
        crf_from_config({"kind": "banana"})


# -- fitting -----------------------------------------------------------------------------


def _batches(count: int, seed: int):
    out = []
    for i in range(count):
        image = scene(16, 20, batch=2, seed=seed + i)
        logits = noisy_logits(image, 4, seed=seed + i)
        out.append((logits, image, region_labels(2, 16, 20)))
    return out


def _held_out_loss(crf, batches) -> float:
    with torch.no_grad():
        losses = [
            torch.nn.functional.nll_loss(crf(logits, image), target)
            for logits, image, target in batches
        ]
    return float(torch.stack(losses).mean())


def test_fit_conv_crf_lowers_held_out_loss():
    torch.manual_seed(0)
    train, held_out = _batches(3, seed=0), _batches(2, seed=100)
    crf = ConvCRF(
        num_iterations=3, filter_size=5, blur=2, pos_w=0.5, bi_w=0.5,
        compatibility="matrix", num_classes=4, trainable_kernels=True,
    )
    before = _held_out_loss(crf, held_out)
    losses = fit_crf(crf, train, iters=30, lr=0.05)
    assert len(losses) == 30
    assert _held_out_loss(crf, held_out) < before
    state = crf.state_dict()
    assert {"pos_w", "bi_w", "compat", "pos_xy_std"} <= set(state)


def test_fit_dense_crf_weights():
    train = _batches(2, seed=0)
    crf = DenseCRF(num_iterations=3, pos_w=0.5, bi_w=0.5)
    before = float(crf.bi_w.detach())
    losses = fit_crf(crf, iter(train), iters=6, lr=0.1)
    assert len(losses) == 6 and float(crf.bi_w.detach()) != before
    with pytest.raises(ValueError, match="at least one batch"):
        fit_crf(DenseCRF(), [], iters=1)
