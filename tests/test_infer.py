"""atrous.infer against references computed by hand (numpy bilinear matrices from tests/by_hand.py, tiles
listed literally, explicit loops over views), never through atrous.infer itself."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import atrous
from atrous.errors import UserError
from atrous.inference.infer import tile_starts
from atrous.runtime.device import resolve_precision
from tests.by_hand import interpolation_matrix, softmax

K = 4  # classes of the test models


def resize(array: np.ndarray, height: int, width: int) -> np.ndarray:
    """(..., H, W) -> (..., height, width) by the two bilinear matrices."""
    rows = interpolation_matrix(height, array.shape[-2])
    cols = interpolation_matrix(width, array.shape[-1])
    return rows @ array @ cols.T


class Pointwise(nn.Module):
    """logits = W x + b at each pixel (a 1x1 conv with known weights): no spatial context, so
    every view's output is predictable from the input alone."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, K, 1)
        generator = torch.Generator().manual_seed(1)
        with torch.no_grad():
            self.conv.weight.copy_(torch.randn(K, 3, 1, 1, generator=generator) * 2)
            self.conv.bias.copy_(torch.randn(K, generator=generator))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)

    def numpy(self, x: np.ndarray) -> np.ndarray:
        """(3, H, W) -> (K, H, W)."""
        weight = self.conv.weight.detach().numpy()[:, :, 0, 0]
        return np.einsum("kc,chw->khw", weight, x) + self.conv.bias.detach().numpy()[:, None, None]


class ColumnRamp(Pointwise):
    """Pointwise logits plus a ramp along the columns that ignores the input: a mirrored view
    mirrored back carries the reversed ramp, which is how flipping shows."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x) + self.ramp(x.shape[-1])

    @staticmethod
    def ramp(width: int) -> torch.Tensor:
        columns = torch.arange(width, dtype=torch.float32) / width
        return 3 * torch.arange(K, dtype=torch.float32)[:, None, None] * columns  # (K, 1, W)


def context_net() -> nn.Module:
    """Two 3x3 convolutions with biases: the receptive field crosses tile borders, and
    zero-padding the input is not the same as the convolutions' own padding."""
    torch.manual_seed(2)
    return nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.Tanh(), nn.Conv2d(6, K, 3, padding=1)).eval()


def net_probs(net: nn.Module, x: np.ndarray) -> np.ndarray:
    """(3, h, w) -> (K, h, w) softmax of one forward pass."""
    with torch.no_grad():
        logits = net(torch.from_numpy(x).float()[None])[0].double().numpy()
    return softmax(logits, 0)


def scores_of(mean_probs: np.ndarray) -> np.ndarray:
    return np.log(mean_probs)


def test_single_view_is_the_models_logits_and_modes_are_restored():
    model = atrous.create_model("deeplab_v3plus", 3, backbone="resnet18", decoder_channels=32, aspp_channels=32)
    model.train()
    model.backbone.eval()  # a frozen part keeps its own mode
    x = torch.randn(2, 3, 37, 45)
    scores = atrous.infer(model, x, precision="fp32")
    assert model.training and not model.backbone.training
    model.eval()
    with torch.no_grad():
        assert torch.equal(scores, model(x))
    assert scores.dtype == torch.float32 and scores.shape == (2, 3, 37, 45)


def test_flip_averages_the_mirrored_view():
    model = ColumnRamp()
    x = np.random.default_rng(0).normal(size=(2, 3, 5, 9))
    scores = atrous.infer(model, torch.from_numpy(x).float(), flip=True, precision="fp32").double().numpy()
    ramp = ColumnRamp.ramp(9).numpy()
    for n in range(2):
        base = model.numpy(x[n])  # the pointwise part is the same in both views
        expected = (softmax(base + ramp, 0) + softmax(base + ramp[..., ::-1], 0)) / 2
        np.testing.assert_allclose(scores[n], scores_of(expected), atol=1e-5)


def test_scales_resize_the_input_and_the_probabilities_back():
    model = Pointwise()
    x = np.random.default_rng(1).normal(size=(1, 3, 12, 16))
    scores = atrous.infer(model, torch.from_numpy(x).float(), scales=(0.5, 0.75, 1.25), precision="fp32")
    sizes = [(6, 8), (9, 12), (15, 20)]  # round(12 s) x round(16 s)
    expected = np.zeros((K, 12, 16))
    for height, width in sizes:
        probs = softmax(model.numpy(resize(x[0], height, width)), 0)
        expected += resize(probs, 12, 16) / len(sizes)
    np.testing.assert_allclose(scores[0].double().numpy(), scores_of(expected), atol=1e-5)


def test_tile_starts_cover_the_side_flush_with_the_end():
    assert tile_starts(10, 6, 4) == [0, 4]
    assert tile_starts(14, 8, 5) == [0, 5, 6]
    assert tile_starts(16, 8, 4) == [0, 4, 8]
    assert tile_starts(5, 8, 3) == [0]
    assert tile_starts(8, 8, 3) == [0]


def manual_slide(net: nn.Module, image: np.ndarray, window: tuple[int, int], tops: list[int],
                 lefts: list[int]) -> np.ndarray:
    """(3, H, W) -> (K, H, W) probabilities: the image zero-padded up to the window, every
    listed tile run on its own, probabilities summed and divided by the coverage."""
    height, width = image.shape[-2:]
    padded = np.zeros((3, max(height, window[0]), max(width, window[1])))
    padded[:, :height, :width] = image
    total = np.zeros((K, *padded.shape[-2:]))
    count = np.zeros(padded.shape[-2:])
    for top in tops:
        for left in lefts:
            tile = padded[:, top : top + window[0], left : left + window[1]]
            total[:, top : top + window[0], left : left + window[1]] += net_probs(net, tile)
            count[top : top + window[0], left : left + window[1]] += 1
    assert count.min() >= 1
    return (total / count)[:, :height, :width]


def test_sliding_window_against_tiles_run_by_hand():
    net = context_net()
    x = np.random.default_rng(2).normal(size=(2, 3, 10, 14))
    scores = atrous.infer(net, torch.from_numpy(x).float(), window=(6, 8), stride=(4, 5), precision="fp32",
                          tile_batch=4)  # 12 tiles in 3 batches
    for n in range(2):
        expected = manual_slide(net, x[n], (6, 8), tops=[0, 4], lefts=[0, 5, 6])
        np.testing.assert_allclose(scores[n].double().numpy(), scores_of(expected), atol=1e-5)
    whole = atrous.infer(net, torch.from_numpy(x).float(), precision="fp32")
    assert (whole - scores).abs().max() > 1e-3, "tiles see less context than the whole image"


def test_a_window_larger_than_the_image_pads_it():
    net = context_net()
    x = np.random.default_rng(3).normal(size=(1, 3, 5, 7))
    scores = atrous.infer(net, torch.from_numpy(x).float(), window=8, precision="fp32")
    expected = manual_slide(net, x[0], (8, 8), tops=[0], lefts=[0])
    np.testing.assert_allclose(scores[0].double().numpy(), scores_of(expected), atol=1e-5)
    unpadded = softmax(net(torch.from_numpy(x).float())[0].detach().double().numpy(), 0)
    assert np.abs(np.log(unpadded) - scores_of(expected)).max() > 1e-3, "padding must show in this test"


def test_scales_flips_and_windows_combined():
    net = context_net()
    x = np.random.default_rng(4).normal(size=(2, 3, 12, 16))
    scores = atrous.infer(net, torch.from_numpy(x).float(), scales=(0.5, 1.0), flip=True, window=8, stride=4,
                          precision="fp32", tile_batch=3)
    # 0.5: a 6x8 image padded to one 8x8 tile; 1.0: tops 0, 4 and lefts 0, 4, 8
    tiles = {(6, 8): ([0], [0]), (12, 16): ([0, 4], [0, 4, 8])}
    for n in range(2):
        expected = np.zeros((K, 12, 16))
        for (height, width), (tops, lefts) in tiles.items():
            scaled = resize(x[n], height, width)
            plain = manual_slide(net, scaled, (8, 8), tops, lefts)
            mirrored = manual_slide(net, scaled[..., ::-1].copy(), (8, 8), tops, lefts)[..., ::-1]
            expected += (resize(plain, 12, 16) + resize(mirrored, 12, 16)) / 4
        np.testing.assert_allclose(scores[n].double().numpy(), scores_of(expected), atol=1e-5)


def test_precision_auto_follows_the_cpu_and_fp32_stays_exact(monkeypatch):
    from atrous.inference.infer import prepare
    from tests.test_torchvision_compat import randomise_batch_norm

    torch.manual_seed(3)
    net = nn.Sequential(nn.Conv2d(3, 6, 3, padding=1, bias=False), nn.BatchNorm2d(6), nn.Tanh(),
                        nn.Conv2d(6, K, 3, padding=1))
    randomise_batch_norm(net)
    net.eval()
    x = torch.randn(1, 3, 20, 24)
    with torch.no_grad():
        reference = net(x)
    cpu = torch.device("cpu")
    assert torch.equal(atrous.infer(net, x, precision="fp32"), reference)
    monkeypatch.setattr("atrous.runtime.device.cpu_has_native_bf16", lambda: False)
    assert resolve_precision("auto", cpu) == "fp32"
    fast = prepare(net)
    assert fast.precision == "fp32" and not fast.channels_last
    assert not any(isinstance(m, nn.BatchNorm2d) for m in fast.network.modules()), "batch norm folded"
    assert (atrous.infer(fast, x) - reference).abs().max() < 1e-5
    monkeypatch.setattr("atrous.runtime.device.cpu_has_native_bf16", lambda: True)
    assert resolve_precision("auto", cpu) == "bf16"
    assert resolve_precision("fp32", cpu) == "fp32"
    before = {k: v.clone() for k, v in net.state_dict().items()}
    fast = prepare(net)
    assert fast.precision == "bf16" and fast.channels_last
    scores = atrous.infer(fast, x)
    assert not torch.equal(scores, reference) and (scores - reference).abs().max() < 0.1  # bf16 rounding
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items()), "the user's model is untouched"
    assert net[0].weight.is_contiguous() and isinstance(net[1], nn.BatchNorm2d), "its layout and layers too"


@pytest.mark.parametrize(
    "options,fragment",
    [
        ({"scales": (1.0, 0.0)}, "scales"),
        ({"scales": (-0.5,)}, "scales"),
        ({"scales": ()}, "scales"),
        ({"window": 0}, "window"),
        ({"window": (8, 8, 8)}, "window"),
        ({"window": 8, "stride": 9}, "stride"),
        ({"window": (8, 4), "stride": (4, 5)}, "stride"),
        ({"window": 8, "stride": 0}, "stride"),
        ({"stride": 4}, "window"),
        ({"precision": "fp64"}, "precision"),
    ],
)
def test_impossible_options_are_one_line_errors(options, fragment):
    """One line naming the argument (the command line prints its flag: --slide for window)."""
    with pytest.raises(UserError, match=fragment) as caught:
        atrous.infer(Pointwise(), torch.zeros(1, 3, 8, 8), **options)
    assert "\n" not in str(caught.value) and "--" not in str(caught.value)
    assert fragment in caught.value.arguments


def test_eval_and_predict_go_through_infer(tmp_path, monkeypatch, tiny_checkpoint):
    """(The training loop's --eval-every calls evaluate.)"""
    from PIL import Image

    from atrous.data import SyntheticScenes
    from atrous.inference.evaluate import evaluate
    from atrous.inference.infer import InferenceModel, make_views
    from atrous.inference.predict import predict

    calls: list[tuple[int, ...]] = []
    real_call = InferenceModel.__call__

    def spy(self, images):
        calls.append(tuple(images.shape))
        return real_call(self, images)

    monkeypatch.setattr(InferenceModel, "__call__", spy)
    model = atrous.load_checkpoint(str(tiny_checkpoint))
    evaluate(model, SyntheticScenes("val", length=2, size=40), batch_size=2, views=make_views((1.0,), True),
             progress=False)
    assert calls == [(4, 3, 40, 40)], "one batch: the images and their mirrors"
    calls.clear()
    Image.fromarray(np.zeros((30, 50, 3), np.uint8)).save(tmp_path / "a.png")
    predict(model, [str(tmp_path / "a.png")], str(tmp_path / "out"), views=make_views((1.0,), False, 32, 16),
            progress=False)
    assert calls == [(3, 3, 32, 32)], "one row of tiles (30 padded to 32), three columns (0, 16, 18)"


def _folding_net() -> nn.Module:
    from tests.test_torchvision_compat import randomise_batch_norm

    torch.manual_seed(5)
    net = nn.Sequential(nn.Conv2d(3, 6, 3, padding=1, bias=False), nn.BatchNorm2d(6), nn.ReLU(),
                        nn.Conv2d(6, K, 3, padding=1))
    randomise_batch_norm(net)
    return net.eval()


def _count_folds(monkeypatch) -> list[int]:
    import importlib

    infer_module = importlib.import_module("atrous.inference.infer")  # (atrous.inference.infer: the function)
    calls = []
    fold = infer_module.fold_batch_norm

    def counted(*args, **kwargs):
        calls.append(1)
        return fold(*args, **kwargs)

    monkeypatch.setattr(infer_module, "fold_batch_norm", counted)
    return calls


def test_infer_on_a_plain_model_prepares_it_once(monkeypatch):
    """atrous.infer(model, x) in a loop: the folded copy is made at the first call only, and
    gives the same scores as a model prepared by hand."""
    from atrous.inference.infer import InferenceModel

    net, x = _folding_net(), torch.randn(1, 3, 16, 20)
    calls = _count_folds(monkeypatch)
    first = atrous.infer(net, x, precision="bf16")
    for _ in range(3):
        assert torch.equal(atrous.infer(net, x, precision="bf16"), first)
    assert len(calls) == 1
    assert torch.equal(InferenceModel(net, "bf16")(x), first) and len(calls) == 2, "what prepare would build"
    atrous.infer(net, x, precision="fp16")  # another precision: its own copy, the first one kept
    atrous.infer(net, x, precision="bf16")
    assert len(calls) == 3
    atrous.infer(net, x, precision="fp32")  # exact: the model itself, nothing folded
    assert len(calls) == 3


def test_training_between_calls_is_seen_by_the_next_infer(monkeypatch):
    """A few optimizer steps (weights and running statistics change in place), then
    load_state_dict, then .data replaced: each time the next call folds the new weights,
    as a fresh fp32 reference of the same model shows."""
    net, x = _folding_net(), torch.randn(2, 3, 16, 20)
    calls = _count_folds(monkeypatch)
    before = atrous.infer(net, x, precision="bf16")
    optimizer = torch.optim.SGD(net.parameters(), lr=0.5)
    net.train()
    for _ in range(3):
        optimizer.zero_grad()
        net(x).square().mean().backward()
        optimizer.step()
    net.eval()
    after = atrous.infer(net, x, precision="bf16")
    assert len(calls) == 2 and not torch.equal(after, before)
    with torch.no_grad():
        reference = net(x)
    assert (after - reference).abs().max() < 0.05 * (1 + reference.abs().max())  # bf16 of the new weights
    state = {k: v.clone() for k, v in _folding_net().state_dict().items()}
    net.load_state_dict(state)
    assert torch.allclose(atrous.infer(net, x, precision="bf16"), before) and len(calls) == 3
    net[3].bias.data = net[3].bias.data + 1.0  # a new tensor behind the parameter
    assert torch.allclose(atrous.infer(net, x, precision="bf16"), before + 1.0, atol=0.05) and len(calls) == 4
    net[0].dilation, net[0].padding = (2, 2), (2, 2)  # a setting, no weight, changed
    atrous.infer(net, x, precision="bf16")
    assert len(calls) == 5


def test_the_cached_copy_goes_with_the_model():
    import gc
    import weakref

    from atrous.inference.infer import _PREPARED

    net = _folding_net()
    atrous.infer(net, torch.randn(1, 3, 8, 8), precision="bf16")
    assert net in _PREPARED
    gone = weakref.ref(net)
    del net
    gc.collect()
    assert gone() is None, "the cache keeps no model alive"


def test_a_changed_model_leaves_no_stale_copies():
    from atrous.inference.infer import _PREPARED

    net, x = _folding_net(), torch.randn(1, 3, 8, 8)
    atrous.infer(net, x, precision="bf16")
    atrous.infer(net, x, precision="fp16")
    assert len(_PREPARED[net]) == 2
    with torch.no_grad():
        net[3].bias.add_(1.0)
    atrous.infer(net, x, precision="bf16")
    assert list(_PREPARED[net]) == [("bf16", "bf16", "cpu")], "the fp16 copy of the old weights is dropped"
