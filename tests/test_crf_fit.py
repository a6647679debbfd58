"""`atrous fit-crf`: decoupled CRF fitting on a frozen model, saved into the checkpoint."""

from __future__ import annotations

import hashlib
import json

import pytest
import torch

import atrous
from atrous.cli import main
from atrous.commands import eval as eval_command
from atrous.crf import ConvCRF, DenseCRF
from atrous.inference.refinement import build_crf
from atrous.training.trainer import TrainConfig, train

SYNTHETIC = ["--dataset", "synthetic", "--synthetic-size", "64", "--no-progress"]
FIT = ["fit-crf", *SYNTHETIC, "--iters", "3", "--max-images", "4", "--batch-size", "2", "--lr", "0.2"]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> str:
    out = tmp_path_factory.mktemp("model")
    cfg = TrainConfig(model="deeplab_v3plus", backbone="resnet18", dataset="synthetic", out=str(out),
                      synthetic_size=64, synthetic_length=16, iters=3, batch_size=2, crop_size=64,
                      progress=False, eval_split=None)
    train(cfg)
    return str(out / "model.safetensors")


def _digest(path: str) -> str:
    with open(path, "rb") as handle:
        return hashlib.sha256(handle.read()).hexdigest()


def _crf_used_by_eval(monkeypatch, checkpoint: str, kind: str) -> torch.nn.Module:
    """Run `atrous eval --crf kind` on 2 images and return the CRF it refined with."""
    used = {}
    real_evaluate = eval_command.evaluate

    def evaluate(model, dataset, **kwargs):
        used["crf"] = kwargs["crf"]
        return real_evaluate(model, torch.utils.data.Subset(dataset, range(2)), **kwargs)

    monkeypatch.setattr(eval_command, "evaluate", evaluate)
    assert main(["eval", "--checkpoint", checkpoint, *SYNTHETIC, "--crf", kind]) == 0
    return used["crf"]


def test_fit_conv_crf_is_saved_and_used_by_eval(checkpoint, tmp_path, monkeypatch, capsys):
    original = _digest(checkpoint)
    out = str(tmp_path / "fitted.safetensors")
    assert main([*FIT, "--checkpoint", checkpoint, "--crop-size", "48", "--out", out]) == 0
    printed = capsys.readouterr().out
    assert "before" in printed and "after" in printed
    assert _digest(checkpoint) == original  # --out leaves the original alone

    entry = atrous.load_checkpoint(out).meta["crf"]["conv"]
    assert set(entry) == {"init", "state", "fit"}
    json.dumps(entry)  # plain JSON
    assert entry["fit"]["iters"] == 3 and entry["fit"]["images"] == 4

    crf = _crf_used_by_eval(monkeypatch, out, "conv")
    assert isinstance(crf, ConvCRF)
    defaults = ConvCRF(num_classes=crf.num_classes)
    assert crf.pos_w.item() != defaults.pos_w.item() and crf.bi_w.item() != defaults.bi_w.item()
    # exact round trip: the rebuilt CRF's state is the saved one, bit for bit
    for name, value in crf.state_dict().items():
        assert value.tolist() == entry["state"][name], name
    assert {k: v for k, v in crf.config().items() if k != "kind"} == entry["init"]


def test_fit_dense_matrix_in_place_keeps_other_fits(checkpoint, tmp_path, capsys):
    path = str(tmp_path / "model.safetensors")
    with open(checkpoint, "rb") as src, open(path, "wb") as dst:
        dst.write(src.read())
    params = tmp_path / "params.yaml"
    params.write_text("num_iterations: 2\ncompatibility: matrix\npos_w: 1.0\nbi_w: 1.0\n")
    assert main([*FIT, "--checkpoint", path, "--crf", "conv", "--iters", "1"]) == 0
    assert main([*FIT, "--checkpoint", path, "--crf", "dense", "--crf-params", str(params)]) == 0
    saved = atrous.load_checkpoint(path).meta["crf"]
    assert set(saved) == {"conv", "dense"}  # the earlier conv fit is kept
    model = atrous.load_checkpoint(path)
    crf = build_crf("dense", model)
    assert isinstance(crf, DenseCRF) and crf.compatibility == "matrix" and crf.num_iterations == 2
    assert crf.compat.tolist() == saved["dense"]["state"]["compat"]
    assert not torch.equal(crf.compat, 1 - torch.eye(crf.num_classes))
    # --crf-params still overrides the fitted values
    override = tmp_path / "override.json"
    override.write_text(json.dumps({"bi_w": 7.5}))
    assert build_crf("dense", model, str(override)).bi_w.item() == 7.5


def _run_error(args, capsys) -> str:
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    return err


def test_fit_crf_errors_are_one_line(checkpoint, tmp_path, capsys):
    original = _digest(checkpoint)
    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(b"not a checkpoint")
    assert "garbage.safetensors" in _run_error([*FIT, "--checkpoint", str(garbage)], capsys)
    assert "not found" in _run_error([*FIT, "--checkpoint", str(tmp_path / "missing.safetensors")], capsys)

    small = tmp_path / "three_classes.safetensors"
    atrous.save_checkpoint(atrous.create_model("deeplab_v3plus", 3, backbone="resnet18"), str(small))
    assert "classes" in _run_error([*FIT, "--checkpoint", str(small)], capsys)

    for text, expected in (("[1, 2]", "mapping"), ("banana: 1", "banana"), ("{a: [", "YAML"),
                           ("pos_xy_std: -1", "positive"), ("num_classes: 5", "num_classes")):
        params = tmp_path / "params.yaml"
        params.write_text(text)
        err = _run_error([*FIT, "--checkpoint", checkpoint, "--crf-params", str(params)], capsys)
        assert expected in err and "params.yaml" in err
    assert "--iters" in _run_error([*FIT, "--checkpoint", checkpoint, "--iters", "0"], capsys)
    assert _digest(checkpoint) == original
