"""Checkpoints, training (exact resume, atomic writes, loss goes down), eval and predict."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch
from PIL import Image

import atrous
from atrous.errors import UserError
from atrous.training.trainer import Trainer, poly_lr, train
from tests.conftest import tiny_config


def test_checkpoint_round_trip_gives_identical_outputs(tmp_path):
    torch.manual_seed(0)
    model = atrous.create_model("deeplab_v3plus", 5, backbone="resnet18", output_stride=8, separable=True)
    model.meta = {"class_names": list("abcde"), "mean": [0.5] * 3, "std": [0.2] * 3}
    # non-trivial BN statistics, so that buffers are checked too
    model.train()
    with torch.no_grad():
        model(torch.randn(2, 3, 64, 64))
    model.eval()
    path = tmp_path / "m.safetensors"
    atrous.save_checkpoint(model, str(path), note="hello")
    loaded = atrous.load_checkpoint(str(path))
    x = torch.randn(1, 3, 97, 131)
    with torch.no_grad():
        assert torch.equal(model(x), loaded(x))
    assert loaded.config == json.loads(json.dumps(model.config))
    assert loaded.meta["class_names"] == list("abcde") and loaded.meta["note"] == "hello"
    assert not loaded.training


def test_load_checkpoint_errors(tmp_path):
    with pytest.raises(UserError, match="checkpoint not found"):
        atrous.load_checkpoint(str(tmp_path / "missing.safetensors"))
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(os.urandom(64))
    with pytest.raises(UserError, match="not a readable .safetensors"):
        atrous.load_checkpoint(str(junk))
    from safetensors.torch import save_file

    plain = tmp_path / "plain.safetensors"
    save_file({"w": torch.zeros(2)}, str(plain))
    with pytest.raises(UserError, match="not an atrous checkpoint"):
        atrous.load_checkpoint(str(plain))
    # right header, wrong weights: a unet header over deeplab weights
    model = atrous.create_model("deeplab_v3plus", 3, backbone="resnet18")
    good = tmp_path / "good.safetensors"
    atrous.save_checkpoint(model, str(good))
    from safetensors import safe_open
    from safetensors.torch import load_file

    with safe_open(str(good), "pt") as handle:
        header = json.loads(handle.metadata()["atrous"])
    header["model"]["num_classes"] = 4
    save_file(load_file(str(good)), str(tmp_path / "bad.safetensors"), metadata={"atrous": json.dumps(header)})
    with pytest.raises(UserError, match="weights do not fit"):
        atrous.load_checkpoint(str(tmp_path / "bad.safetensors"))


def test_poly_schedule():
    assert poly_lr(0.01, 0, 100, 0.9) == 0.01
    assert poly_lr(0.01, 50, 100, 0.9) == pytest.approx(0.01 * 0.5**0.9)
    assert poly_lr(0.01, 0, 100, 0.9, warmup=10) == pytest.approx(0.001)


def _weights(path):
    from safetensors.torch import load_file

    return load_file(str(path))


def test_resume_gives_the_same_weights_as_a_straight_run(tmp_path):
    straight = tmp_path / "straight"
    # 4 scenes, batch 2: two iterations per epoch; the stop falls inside epoch 2
    train(tiny_config(straight, iters=6, synthetic_length=4, checkpoint_every=100))
    split = tmp_path / "split"
    result = train(tiny_config(split, iters=6, synthetic_length=4, stop_after=3))
    assert result["train"]["iters"] == 3 and not result["train"]["finished"]
    train(tiny_config(split, iters=6, synthetic_length=4, resume=True))
    a, b = _weights(straight / "model.safetensors"), _weights(split / "model.safetensors")
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key
    events = [json.loads(line) for line in (split / "log.jsonl").read_text().splitlines()]
    assert [e.get("event") for e in events if "event" in e] == ["stopped", "finished"]
    straight_epochs = [json.loads(line) for line in (straight / "log.jsonl").read_text().splitlines()]
    losses = [(e["epoch"], e["loss"]) for e in events if "epoch" in e]
    assert losses == [(e["epoch"], e["loss"]) for e in straight_epochs if "epoch" in e]
    assert [epoch for epoch, _ in losses] == [1, 2, 3]


def test_eval_every_logs_a_validation_curve_without_changing_training(tmp_path):
    plain, curve = tmp_path / "plain", tmp_path / "curve"
    options = dict(iters=4, synthetic_length=4, eval_split="val", eval_batch_size=4, checkpoint_every=100)
    train(tiny_config(plain, **options))
    result = train(tiny_config(curve, eval_every=2, **options))
    a, b = _weights(plain / "model.safetensors"), _weights(curve / "model.safetensors")
    for key in a:  # evaluation (eval mode, no RNG) leaves the weights and BN statistics alone
        assert torch.equal(a[key], b[key]), key
    points = [json.loads(line) for line in (curve / "log.jsonl").read_text().splitlines() if "val_mIoU" in line]
    assert [p["step"] for p in points] == [2, 4]
    assert points[-1]["val_mIoU"] == pytest.approx(result["val"]["mIoU"], abs=1e-5)
    assert not any("val_mIoU" in line for line in (plain / "log.jsonl").read_text().splitlines())


def test_training_lowers_the_loss_and_writes_outputs(tmp_path):
    out = tmp_path / "run"
    cfg = tiny_config(out, iters=16, synthetic_length=4, scale_min=1.0, scale_max=1.0, lr=3e-3, eval_split="val",
                      eval_batch_size=4, checkpoint_every=8)
    result = train(cfg)
    losses = [json.loads(line)["loss"] for line in (out / "log.jsonl").read_text().splitlines() if "epoch" in line]
    assert losses[-1] < losses[0]
    assert {"model.safetensors", "metrics.json", "log.jsonl", "train_state.pt", "config.json"} <= set(os.listdir(out))
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["val"]["mIoU"] == pytest.approx(result["val"]["mIoU"])
    assert len(metrics["val"]["per_class_iou"]) == 7


def test_training_refuses_to_overwrite_and_checks_resume(tmp_path, tiny_checkpoint):
    out = tiny_checkpoint.parent
    before = tiny_checkpoint.read_bytes()
    with pytest.raises(UserError, match="already exists"):
        Trainer(tiny_config(out))
    with pytest.raises(UserError, match="trained with model='deeplab_v3plus'"):
        Trainer(tiny_config(out, model="unet", backbone="resnet18", resume=True))
    with pytest.raises(UserError, match="already finished"):
        Trainer(tiny_config(out, resume=True))
    with pytest.raises(UserError, match="no training state"):
        Trainer(tiny_config(tmp_path / "empty", resume=True))
    assert tiny_checkpoint.read_bytes() == before


def test_resume_of_a_run_saved_before_an_option_existed(tmp_path):
    """A training state written by an older atrous lacks newer options (train_split, say):
    they were at their defaults then, so the run resumes; a changed option is still refused."""
    out = tmp_path / "old"
    Trainer(tiny_config(out, stop_after=2)).run()
    state_path = out / "train_state.pt"
    state = torch.load(state_path, weights_only=True)
    del state["config"]["train_split"]
    torch.save(state, state_path)
    assert Trainer(tiny_config(out, resume=True)).step == 2
    with pytest.raises(UserError, match="trained with train_split='train', not 'val'"):
        Trainer(tiny_config(out, resume=True, train_split="val"))


def test_a_failed_checkpoint_write_leaves_the_old_file(tmp_path, monkeypatch):
    model = atrous.create_model("unet", 2, backbone="resnet18")
    path = tmp_path / "model.safetensors"
    atrous.save_checkpoint(model, str(path))
    before = path.read_bytes()

    def broken_save(tensors, filename, metadata=None):
        with open(filename, "wb") as handle:
            handle.write(b"half a file")
        raise KeyboardInterrupt  # killed mid-write

    monkeypatch.setattr("atrous.checkpoints.checkpoint.save_file", broken_save)
    with pytest.raises(KeyboardInterrupt):
        atrous.save_checkpoint(model, str(path))
    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == ["model.safetensors"]


def test_evaluate_and_predict(tmp_path, tiny_checkpoint):
    from atrous.data import SyntheticScenes
    from atrous.inference.evaluate import evaluate, format_table
    from atrous.inference.predict import predict

    model = atrous.load_checkpoint(str(tiny_checkpoint))
    metrics = evaluate(model, SyntheticScenes("val", length=4, size=64), trimap_widths=[2], progress=False)
    assert 0 <= metrics["mIoU"] <= 1 and "2" in metrics["trimap"]
    table = format_table(metrics)
    assert "boat" in table and "mIoU" in table
    image = np.random.default_rng(0).integers(0, 255, (37, 53, 3), dtype=np.uint8)
    Image.fromarray(image).save(tmp_path / "odd.jpg")
    written = predict(model, [str(tmp_path / "odd.jpg")], str(tmp_path / "out"), progress=False)
    labels = Image.open(tmp_path / "out" / "odd.png")
    assert labels.mode == "P" and labels.size == (53, 37)
    assert np.asarray(labels).max() < 7
    assert Image.open(tmp_path / "out" / "odd_overlay.png").size == (53, 37)
    assert len(written) == 2
