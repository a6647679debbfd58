"""What users add: a loss, a dataset and a model registered by name, from one module of their
own, reaching the command line through --import without editing atrous."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from atrous.cli import main
from atrous.data import build_dataset, list_datasets
from atrous.errors import UserError
from atrous.losses import BatchTotals, build_loss, list_losses, loss_options

PLUGIN = '''
"""A user's own module: a loss, a dataset and a model, registered by name."""
import torch
import torch.nn.functional as F

from atrous.data import SyntheticScenes, register_dataset
from atrous.losses import SegmentationLoss, register_loss
from atrous.models import register_model
from atrous.models.unet import UNet


@register_loss("{loss}", weighted=True)
class Squared(SegmentationLoss):
    """Mean squared error between softmax and one-hot labels, over labelled pixels."""

    def __init__(self, scale: float = 1.0, **kwargs) -> None:
        super().__init__(**kwargs)
        self.scale = scale

    def __call__(self, logits, target, totals):
        valid = target != self.ignore_index
        truth = F.one_hot(target.masked_fill(~valid, 0), logits.shape[1]).permute(0, 3, 1, 2).float()
        error = ((logits.float().softmax(1) - truth) ** 2).sum(1) * valid
        return self.scale * error.sum() / max(totals.pixel_weight, 1.0)


@register_dataset("{dataset}", root="-")
def small_scenes(split, *, synthetic_size=128, **_):
    return SyntheticScenes(split, size=48, length=4)


@register_model("{model}", "U-Net, registered again under another name by a plugin")
class MyUNet(UNet):
    """U-Net under another name.

    Args:
        base_channels (int): see unet.
    """
'''


def write_plugin(folder: Path, name: str) -> dict[str, str]:
    names = {"loss": f"{name}_mse", "dataset": f"{name}_scenes", "model": f"{name}_unet"}
    (folder / f"{name}.py").write_text(textwrap.dedent(PLUGIN.format(**names)))
    return names


def test_a_loss_registered_by_a_module_trains_through_the_cli(tmp_path, monkeypatch, capsys):
    """One file of the user's, named by --import: its loss, dataset and model are choices of
    `atrous train`, the loss's option arrives through --loss-opt, and the run trains."""
    monkeypatch.syspath_prepend(str(tmp_path))
    names = write_plugin(tmp_path, "plugin_cli")
    out = tmp_path / "run"
    code = main(["train", "--import", "plugin_cli", "--model", names["model"], "--model-opt", "base_channels=8",
                 "--dataset", names["dataset"], "--loss", names["loss"], "--loss-opt", "scale=2.0",
                 "--iters", "2", "--batch-size", "2", "--crop-size", "32", "--out", str(out), "--no-progress",
                 "--eval-split", ""])
    assert code == 0, capsys.readouterr().err
    config = json.loads((out / "config.json").read_text())
    assert (config["loss"], config["loss_options"], config["model"]) == (names["loss"], {"scale": 2.0}, names["model"])
    assert names["loss"] in list_losses() and names["dataset"] in list_datasets()
    assert loss_options(names["loss"]) == {"scale": 1.0}
    assert main(["train", "--loss", names["loss"], "--loss-opt", "gamma=1", "--model", "fcn32s",
                 "--dataset", "synthetic", "--out", str(tmp_path / "x")]) == 2
    assert "loss 'plugin_cli_mse' has no such option (its options: scale)" in capsys.readouterr().err


def test_import_of_a_missing_module_is_one_line(capsys):
    assert main(["models", "--import", "no_such_module_here"]) == 2
    err = capsys.readouterr().err
    assert "--import no_such_module_here" in err and len(err.strip().splitlines()) == 1


def test_a_plugin_installed_as_an_entry_point_is_found(tmp_path):
    """A package that declares the entry-point group "atrous.plugins" registers its models in
    every atrous command, without --import (a dist-info folder made by hand on the path)."""
    write_plugin(tmp_path, "plugin_ep")
    info = tmp_path / "plugin_ep-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: plugin-ep\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text("[atrous.plugins]\nmine = plugin_ep\n")
    env_path = f"{tmp_path}:{Path(__file__).resolve().parent.parent}"
    result = subprocess.run([sys.executable, "-m", "atrous", "models"], capture_output=True, text=True,
                            env={"PYTHONPATH": env_path, "PATH": "/usr/bin:/bin"}, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "plugin_ep_unet" in result.stdout


def test_builtin_losses_keep_their_old_keywords():
    """build_loss(name, ohem_thresh=..., focal_gamma=...) as before --loss-opt: each keyword
    reaches its own loss, and the others ignore it."""
    torch.manual_seed(0)
    logits, target = torch.randn(1, 3, 4, 4), torch.randint(0, 3, (1, 4, 4))
    totals = BatchTotals(float(target.numel()), images=1)
    for old, new in (({"focal_gamma": 0.0}, {"gamma": 0.0}), ({"ohem_thresh": 1.0}, {"thresh": 1.0})):
        name = "focal" if "focal_gamma" in old else "ohem"
        assert float(build_loss(name, **old)(logits, target, totals)) == float(build_loss(name, **new)(logits, target, totals))
    # focal with gamma 0 is cross-entropy
    assert float(build_loss("focal", gamma=0.0)(logits, target, totals)) == pytest.approx(
        float(build_loss("ce", ohem_thresh=0.5)(logits, target, totals)), rel=1e-6)
    with pytest.raises(ValueError, match="unknown loss 'nope'"):
        build_loss("nope")


def test_a_registered_dataset_is_built_by_name_and_unknown_names_list_the_known():
    with pytest.raises(Exception, match="unknown dataset 'nope'; choose one of: .*camvid"):
        build_dataset("nope", "train")
    with pytest.raises(Exception, match="^dataset folder needs data_root DIR"):
        build_dataset("folder", "train")
    assert len(build_dataset("synthetic", "val", synthetic_size=32, synthetic_length=3)) == 3


def test_loss_options_are_checked_before_any_work():
    from atrous.training import TrainConfig

    with pytest.raises(UserError, match="^loss_options min_kept must be a whole number"):
        TrainConfig(loss="ohem", loss_options={"min_kept": 2.5}).validate()
    with pytest.raises(UserError, match="^loss_options per_image must be true or false"):
        TrainConfig(loss="lovasz", loss_options={"per_image": "yes"}).validate()
    # the legacy flag and --loss-opt: --loss-opt wins
    assert TrainConfig(loss="focal", focal_gamma=1.0, loss_options={"gamma": 3.0}).loss_settings() == {"gamma": 3.0}
    assert TrainConfig(loss="focal", focal_gamma=1.0).loss_settings() == {"gamma": 1.0}
    assert TrainConfig(loss="ce", focal_gamma=1.0).loss_settings() == {}
