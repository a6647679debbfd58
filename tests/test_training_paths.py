"""The trainer's speed and schedule options, each run through `train` and compared with the plain
path on the same data and seed: --channels-last, --fused-optimizer and --compile must give the
plain run's weights (to float rounding), --epochs the same run as the iterations it stands for,
--warmup-iters the learning rates of DeepLab's poly schedule after a linear ramp. And a loss
that turns infinite (not only NaN) stops the run."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file

import atrous.training.trainer as trainer_module
from atrous.errors import UserError
from atrous.training.trainer import TrainConfig, train

BASE_LR = 0.1
# a small U-Net (no dropout, so every path draws the same random numbers), fp32, SGD with momentum
CASE = dict(model="unet", model_options={"base_channels": 8}, dataset="synthetic", synthetic_size=32,
            synthetic_length=8, crop_size=32, batch_size=4, optimizer="sgd", lr=BASE_LR, iters=4, precision="fp32",
            eval_split=None, progress=False, checkpoint_every=100, seed=0)


def run(tmp_path, name: str, **overrides) -> dict[str, torch.Tensor]:
    out = tmp_path / name
    train(TrainConfig(**(CASE | {"out": str(out)} | overrides)))
    return load_file(out / "model.safetensors")


def max_difference(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    assert a.keys() == b.keys()
    return max(float((a[k].double() - b[k].double()).abs().max()) for k in a if a[k].is_floating_point())


@pytest.fixture(scope="module")
def plain(tmp_path_factory) -> dict[str, torch.Tensor]:
    return run(tmp_path_factory.mktemp("plain"), "plain")


@pytest.fixture(scope="module")
def untrained(tmp_path_factory) -> dict[str, torch.Tensor]:
    """The same model and seed before any step: how far training moves the weights."""
    torch.manual_seed(0)
    return run(tmp_path_factory.mktemp("untrained"), "untrained", lr=1e-30)


@pytest.mark.parametrize("option", ["channels_last", "fused_optimizer"])
def test_speed_options_give_the_plain_runs_weights(tmp_path, plain, untrained, option):
    moved = max_difference(plain, untrained)
    got = run(tmp_path, option, **{option: True})
    assert max_difference(got, plain) < 1e-5 < moved / 100


def test_compile_gives_the_plain_runs_weights(tmp_path, plain, untrained):
    if shutil.which("cc") is None and shutil.which("gcc") is None:
        pytest.skip("no C compiler: torch.compile's CPU backend (inductor) needs one; --compile not tested")
    got = run(tmp_path, "compiled", compile=True)
    assert max_difference(got, plain) < 1e-5 < max_difference(plain, untrained) / 100


def test_epochs_stand_for_their_iterations(tmp_path, plain):
    """8 images, batch 4: two epochs are four iterations, the same run to the bit."""
    got = run(tmp_path, "epochs", iters=None, epochs=2)
    assert all(torch.equal(got[k], plain[k]) for k in plain)
    events = [json.loads(line) for line in (tmp_path / "epochs" / "log.jsonl").read_text().splitlines()]
    assert [(e["epoch"], e["step"]) for e in events if "epoch" in e] == [(1, 2), (2, 4)]


def test_warmup_ramps_then_follows_the_poly_schedule(tmp_path, monkeypatch):
    """The learning rate each optimiser step used: base * (t + 1) / W for t < W, then
    base * (1 - t / T) ** 0.9 as without warm-up."""
    used: list[float] = []
    step = torch.optim.SGD.step

    def recording_step(self, *args, **kwargs):
        used.append(self.param_groups[0]["lr"])
        return step(self, *args, **kwargs)

    monkeypatch.setattr(torch.optim.SGD, "step", recording_step)
    run(tmp_path, "plain")
    plain_rates, used[:] = list(used), []
    run(tmp_path, "warmup", warmup_iters=2)
    poly = [BASE_LR * (1 - t / 4) ** 0.9 for t in range(4)]
    assert plain_rates == pytest.approx(poly, rel=1e-12)
    assert used == pytest.approx([BASE_LR / 2, BASE_LR, poly[2], poly[3]], rel=1e-12)


def test_an_infinite_loss_stops_the_run(tmp_path, monkeypatch):
    real = trainer_module.total_loss

    def infinite(*args, **kwargs):
        loss, parts = real(*args, **kwargs)
        return loss * float("inf"), {k: v * float("inf") for k, v in parts.items()}

    monkeypatch.setattr(trainer_module, "total_loss", infinite)
    with pytest.raises(UserError, match=r"training diverged at iteration 1 \(loss inf\)"):
        run(tmp_path, "infinite")


def test_labels_at_stride_take_each_cells_centre():
    from atrous.training.trainer import labels_at_stride

    masks = torch.arange(16 * 24).reshape(1, 16, 24)
    assert labels_at_stride(masks, 8).tolist() == [[[4 * 24 + 4, 4 * 24 + 12, 4 * 24 + 20],
                                                     [12 * 24 + 4, 12 * 24 + 12, 12 * 24 + 20]]]
    assert labels_at_stride(masks, 1) is masks
    assert labels_at_stride(torch.zeros(2, 17, 9), 8).shape == (2, 3, 2)  # ceil


def test_loss_stride_scores_the_score_maps_grid(tmp_path, monkeypatch):
    """--loss-stride 8 on DeepLab v1 (score map at stride 8, as the paper trains): the loss sees
    labels subsampled by 8 and logits on the same grid, close to the raw score map."""
    import atrous.models

    seen = []
    real = trainer_module.total_loss

    def recording(loss_fn, outputs, masks, *args, **kwargs):
        seen.append((outputs["out"].shape, masks.shape))
        return real(loss_fn, outputs, masks, *args, **kwargs)

    monkeypatch.setattr(trainer_module, "total_loss", recording)
    run(tmp_path, "stride8", model="deeplab_v1", model_options={"fc_channels": 16}, iters=1, loss_stride=8)
    assert seen == [(torch.Size([4, 7, 4, 4]), torch.Size([4, 4, 4]))]  # 32x32 crops, 7 synthetic classes
    torch.manual_seed(0)
    model = atrous.models.create_model("deeplab_v1", 3, fc_channels=16).eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        raw = model.segment(x)["out"]
        scored, _ = trainer_module.at_loss_stride({"out": model(x)}, torch.zeros(1, 64, 64, dtype=torch.long), 8)
    assert scored["out"].shape == raw.shape
    assert (scored["out"] - raw).abs().max() <= 0.15 * raw.abs().max()


def test_bootstrapping_duplicates_the_images_with_hard_classes(tmp_path, capsys):
    """DeepLab v3, Sec. 4.1: images containing a hard class are duplicated in the training set;
    an epoch then has their copies too."""
    import numpy as np
    from PIL import Image

    from atrous.data import FolderDataset
    from atrous.training.bootstrap import WithDuplicates, class_indices, hard_images

    root = tmp_path / "folder"
    (root / "images").mkdir(parents=True), (root / "masks").mkdir()
    for i, classes in enumerate([(0, 1), (1, 2), (0,), (2, 3)]):
        mask = np.zeros((16, 16), np.uint8)
        for k, c in enumerate(classes):
            mask[:, 8 * k :] = c
        Image.fromarray(mask).save(root / "masks" / f"{i}.png")
        Image.fromarray(np.full((16, 16, 3), 40 * i, np.uint8)).save(root / "images" / f"{i}.png")
    dataset = FolderDataset(str(root), None, num_classes=4)
    assert class_indices(["class_2", "3"], dataset.info.class_names) == [2, 3]
    assert hard_images(dataset, [2]) == [1, 3]
    doubled = WithDuplicates(dataset, [1, 3], copies=2)
    assert doubled.items == [0, 1, 2, 3, 1, 3, 1, 3]
    assert torch.equal(doubled[4][1], dataset[1][1])
    with pytest.raises(UserError, match="no such class"):
        class_indices(["sofa"], dataset.info.class_names)
    run(tmp_path, "boot", dataset="folder", data_root=str(root), num_classes=4, crop_size=16, batch_size=2,
        iters=None, epochs=1, bootstrap_class=["class_2"])
    assert "bootstrapping: 2 of 4 training images duplicated 1x" in capsys.readouterr().out
    events = [json.loads(line) for line in (tmp_path / "boot" / "log.jsonl").read_text().splitlines()]
    assert [e["step"] for e in events if "epoch" in e] == [3]  # (4 + 2) images / batch 2
