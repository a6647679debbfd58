"""Training options of the scale-out work on one process: --loss, --grad-accum, --precision
fp16 (gradient scaler), and their one-line errors."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from tests.conftest import small_config
from tests.test_cli import assert_one_line_error, run

SMALL = ["--model", "unet", "--model-opt", "base_channels=4", "--dataset", "synthetic", "--synthetic-size", "32",
         "--synthetic-length", "4", "--crop-size", "32", "--batch-size", "2", "--iters", "2", "--eval-split", "",
         "--no-progress"]


@pytest.mark.parametrize("loss", [["--loss", "focal"], ["--loss", "dice"], ["--loss", "lovasz", "--lovasz-per-image"],
                                  ["--loss", "ohem", "--ohem-thresh", "0.5", "--ohem-min-kept", "100"]])
def test_each_loss_trains_from_the_command_line(loss, tmp_path, capsys):
    code, _, err = run(capsys, "train", *SMALL, *loss, "--out", str(tmp_path / "run"))
    assert code == 0, err
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert config["loss"] == loss[1]
    events = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert all(e["loss"] == e["loss"] and e["loss"] > 0 for e in events if "loss" in e)


@pytest.mark.parametrize(
    ("argv", "fragments"),
    [
        (["--batch-size", "4", "--grad-accum", "3"], ["--batch-size 4 does not split", "multiple of 3"]),
        (["--grad-accum", "0"], ["--grad-accum must be at least 1"]),
        (["--loss", "dice", "--class-weights", "median_frequency"], ["--class-weights applies to", "not to --loss dice"]),
        (["--ohem-thresh", "1.5"], ["--ohem-thresh must be at most 1, got 1.5"]),
        (["--dist-timeout", "0"], ["--dist-timeout must be greater than 0, got 0"]),
    ],
)
def test_option_errors_are_one_line(argv, fragments, tmp_path, capsys):
    code, _, err = run(capsys, "train", *SMALL, *argv, "--out", str(tmp_path / "run"))
    assert code == 2
    assert_one_line_error(err, *fragments)
    assert not (tmp_path / "run" / "model.safetensors").exists()


def test_fp16_with_a_gradient_scaler_resumes_exactly(tmp_path):
    """fp16 autocast and torch.amp.GradScaler (on the CPU here); the scaler's state is saved."""
    from atrous.training.trainer import train

    options = dict(model="unet", backbone=None, model_options={"base_channels": 4}, precision="fp16", iters=3)
    train(small_config(tmp_path / "straight", **options))
    train(small_config(tmp_path / "split", stop_after=2, **options))
    scale = torch.load(tmp_path / "split" / "train_state.pt", weights_only=True)["scaler"]["scale"]
    assert scale > 1  # a scaler ran, and its state went into the training state
    train(small_config(tmp_path / "split", resume=True, **options))
    a, b = load_file(str(tmp_path / "straight" / "model.safetensors")), load_file(str(tmp_path / "split" / "model.safetensors"))
    for key in a:
        assert torch.equal(a[key], b[key]), key


def test_resume_keeps_grad_accum_unless_given(tmp_path, capsys):
    """A run started with --grad-accum 2 resumes with it, or on other hardware with another K."""
    out = str(tmp_path / "run")
    code, _, err = run(capsys, "train", *SMALL, "--iters", "3", "--grad-accum", "2", "--stop-after", "1",
                       "--out", out)
    assert code == 0, err
    code, _, err = run(capsys, "train", "--out", out, "--resume", "--stop-after", "1", "--eval-split", "",
                       "--no-progress")
    assert code == 0, err
    assert json.loads((tmp_path / "run" / "config.json").read_text())["grad_accum"] == 2
    code, _, err = run(capsys, "train", "--out", out, "--resume", "--grad-accum", "1", "--eval-split", "",
                       "--no-progress")
    assert code == 0, err
    assert json.loads((tmp_path / "run" / "config.json").read_text())["grad_accum"] == 1
    events = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert [(e["event"], e["step"]) for e in events if "event" in e] == [("stopped", 1), ("stopped", 2), ("finished", 3)]


@pytest.mark.parametrize(("native", "expected"), [(False, "fp32"), (True, "bf16")])
def test_precision_auto_trains_in_bf16_only_where_it_is_native(native, expected, tmp_path, monkeypatch):
    """--precision auto: bf16 autocast where the CPU computes bf16 natively, fp32 where bf16
    would be emulated (many times slower); the summary says which ran, and fp32 gives the
    weights an explicit --precision fp32 run gives."""
    from atrous.training.trainer import train

    monkeypatch.setattr("atrous.runtime.device.cpu_has_native_bf16", lambda: native)
    seen = []
    real = torch.autocast
    monkeypatch.setattr("atrous.runtime.device.torch.autocast", lambda *a, **k: seen.append(k["dtype"]) or real(*a, **k))
    options = dict(model="unet", backbone=None, model_options={"base_channels": 4}, iters=2)
    result = train(small_config(tmp_path / "auto", precision="auto", **options))
    assert result["train"]["precision"] == expected
    assert seen == ([torch.bfloat16] * 2 if native else [])  # one autocast per training step
    config = json.loads((tmp_path / "auto" / "config.json").read_text())
    assert config["precision"] == "auto"  # a resumed run resolves it again on its machine
    if not native:
        train(small_config(tmp_path / "fp32", precision="fp32", **options))
        a = load_file(str(tmp_path / "auto" / "model.safetensors"))
        b = load_file(str(tmp_path / "fp32" / "model.safetensors"))
        assert all(torch.equal(a[key], b[key]) for key in a)


def test_ema_is_the_hand_computed_average_and_resumes_exactly(tmp_path):
    """--ema-decay: after step 1 the average is the model; after step 2 it is d w1 + (1 - d) w2
    with d = 1 - 2^(-3/4) (timm's warm-up, below the cap 0.9), for weights and batch-norm
    statistics alike; the average is what model.safetensors holds, and a run stopped after
    one step and resumed ends where a straight run does."""
    from atrous.training.trainer import train

    options = dict(model_options={"decoder_channels": 16, "aspp_channels": 16}, ema_decay=0.9,
                   checkpoint_every=1)  # DeepLab v3+ ResNet-18: batch norm
    train(small_config(tmp_path / "split", stop_after=1, **options))
    first_raw = torch.load(tmp_path / "split" / "train_state.pt", weights_only=True)["model"]
    first_saved = load_file(str(tmp_path / "split" / "model.safetensors"))
    assert all(torch.equal(first_saved[k], first_raw[k].contiguous()) for k in first_saved)
    train(small_config(tmp_path / "split", resume=True, **options))
    second_raw = torch.load(tmp_path / "split" / "train_state.pt", weights_only=True)["model"]
    second_saved = load_file(str(tmp_path / "split" / "model.safetensors"))
    d = 1 - 2 ** -0.75
    averaged = [k for k in second_saved if second_saved[k].is_floating_point()]
    assert any("running_mean" in k for k in averaged)
    moved = 0
    for key in averaged:
        expected = d * first_raw[key].double() + (1 - d) * second_raw[key].double()
        torch.testing.assert_close(second_saved[key].double(), expected, rtol=1e-6, atol=1e-7)
        moved += not torch.equal(second_raw[key], first_raw[key])
    assert moved > len(averaged) // 2  # the raw model moved, so the check has teeth
    train(small_config(tmp_path / "straight", **options))
    straight = load_file(str(tmp_path / "straight" / "model.safetensors"))
    assert all(torch.equal(straight[k], second_saved[k]) for k in straight)
    # the average only reads the weights: the trained model is the one a run without it trains
    options.pop("ema_decay")
    train(small_config(tmp_path / "plain", **options))
    plain = load_file(str(tmp_path / "plain" / "model.safetensors"))
    assert all(torch.equal(plain[k], second_raw[k].contiguous()) for k in plain)
