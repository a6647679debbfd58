"""Starting from trained weights: load_weights, pretrained folders and Hub repositories,
--init-from with the fine-tuning controls (--freeze backbone, --freeze-bn, --lr-mult)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
from PIL import Image

import atrous
from atrous.cli import main
from atrous.errors import UserError

TINY = dict(backbone="resnet18", decoder_channels=32, aspp_channels=32)


def tiny(num_classes: int, seed: int = 0) -> atrous.SegmentationModel:
    torch.manual_seed(seed)
    return atrous.create_model("deeplab_v3plus", num_classes, **TINY).eval()


def test_weights_of_another_class_count_load_and_the_classifier_starts_anew(tmp_path):
    source = tiny(5, seed=1)
    atrous.save_checkpoint(source, str(tmp_path / "five.safetensors"))
    target = tiny(3, seed=2)
    before = {k: v.clone() for k, v in target.state_dict().items()}
    report = atrous.load_weights(target, str(tmp_path / "five.safetensors"))
    assert sorted(report.reinitialised) == ["classifier.bias", "classifier.weight"]
    assert not report.unused and not report.missing and len(report.matched) == len(before) - 2
    for key, value in target.state_dict().items():
        expected = before[key] if key.startswith("classifier.") else source.state_dict()[key]
        assert torch.equal(value, expected), key
    assert "2 re-initialised (classifier.bias, classifier.weight)" in report.line()
    with pytest.raises(UserError, match="does not fit exactly"):
        atrous.load_weights(tiny(3), str(tmp_path / "five.safetensors"), strict=True)


def test_another_architecture_or_nothing_matching_is_one_line(tmp_path):
    atrous.save_checkpoint(atrous.create_model("unet", 3, backbone="resnet18"), str(tmp_path / "unet.safetensors"))
    with pytest.raises(UserError, match="holds a 'unet' model, not 'deeplab_v3plus'"):
        atrous.load_weights(tiny(3), str(tmp_path / "unet.safetensors"))
    torch.save({"something.else": torch.zeros(7, 7)}, tmp_path / "other.pth")
    with pytest.raises(UserError, match="no tensor matches"):
        atrous.load_weights(tiny(3), str(tmp_path / "other.pth"))
    with pytest.raises(UserError, match="not found: nothing_here.pth"):
        atrous.load_weights(tiny(3), "nothing_here.pth")
    (tmp_path / "broken.pth").write_bytes(b"not a pickle")
    with pytest.raises(UserError, match="broken.pth: cannot read weights"):
        atrous.load_weights(tiny(3), str(tmp_path / "broken.pth"))


def test_a_timm_state_dict_lands_in_the_backbone(tmp_path):
    """An ImageNet-style timm ResNet-18 file (names without atrous' prefix) is matched under
    the backbone's prefix; its fc layer is unused (features_only has none)."""
    torch.manual_seed(3)
    resnet = timm.create_model("resnet18", pretrained=False)
    torch.save({"state_dict": resnet.state_dict()}, tmp_path / "resnet18.pth")
    model = tiny(3)
    report = atrous.load_weights(model, str(tmp_path / "resnet18.pth"))
    assert report.prefix.endswith(".") and "backbone" in report.prefix
    assert set(report.unused) == {"fc.weight", "fc.bias"}
    own = model.state_dict()
    assert torch.equal(own[report.prefix + "conv1.weight"], resnet.state_dict()["conv1.weight"])
    assert torch.equal(own[report.prefix + "layer4.1.bn2.running_var"], resnet.state_dict()["layer4.1.bn2.running_var"])


def test_a_pretrained_folder_round_trips_with_identical_outputs_and_a_card(tmp_path):
    model = tiny(4)
    model.meta = {"class_names": ["sky", "road", "car", "tree"], "palette": [[1, 2, 3]] * 4, "dataset": "mine",
                  "mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25]}
    folder = tmp_path / "shared-model"
    model.save_pretrained(str(folder), metrics={"mIoU": 0.6125}, training={"dataset": "mine", "iters": 100})
    assert sorted(p.name for p in folder.iterdir()) == ["README.md", "config.json", "model.safetensors"]
    again = atrous.from_pretrained(str(folder))
    x = torch.randn(2, 3, 45, 61)
    with torch.no_grad():
        assert torch.equal(model(x), again(x))
    assert again.meta["class_names"] == ["sky", "road", "car", "tree"]
    card = (folder / "README.md").read_text()
    for words in ("DeepLab v3+", "| 2 | car |", "61.25 %", "iters: 100", "atrous.from_pretrained", "[0.5, 0.5, 0.5]",
                  "output stride 16 (the model's default)"):
        assert words in card, words
    assert json.loads((folder / "config.json").read_text())["model"]["num_classes"] == 4
    # another class count: every tensor but the classifier's, reported
    three = atrous.from_pretrained(str(folder), num_classes=3)
    assert three.num_classes == 3 and sorted(three.load_report.reinitialised) == ["classifier.bias",
                                                                                   "classifier.weight"]
    assert "class_names" not in three.meta
    with pytest.raises(UserError, match="predicts 4 classes, not 3"):
        atrous.from_pretrained(str(folder), num_classes=3, strict=True)
    # every --checkpoint takes the folder
    assert atrous.load_checkpoint(str(folder)).num_classes == 4
    with pytest.raises(UserError, match="folder without model.safetensors"):
        atrous.load_checkpoint(str(tmp_path))


def _hub_cache(root: Path, repo_id: str, folder: Path) -> None:
    """huggingface_hub's cache layout: models--owner--name/{refs/main, snapshots/<hash>/...}."""
    repo = root / ("models--" + repo_id.replace("/", "--"))
    commit = "0123456789abcdef0123456789abcdef01234567"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    snapshot = repo / "snapshots" / commit
    snapshot.mkdir(parents=True)
    for path in folder.iterdir():
        (snapshot / path.name).write_bytes(path.read_bytes())


def test_a_hub_repository_loads_from_the_cache_offline(tmp_path, monkeypatch):
    import huggingface_hub.constants as hub

    model = tiny(4)
    model.save_pretrained(str(tmp_path / "folder"))
    _hub_cache(tmp_path / "cache", "someone/camvid-model", tmp_path / "folder")
    monkeypatch.setattr(hub, "HF_HUB_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(hub, "HF_HUB_OFFLINE", True)
    again = atrous.from_pretrained("someone/camvid-model")
    x = torch.randn(1, 3, 33, 47)
    with torch.no_grad():
        assert torch.equal(model(x), again(x))
    assert atrous.load_checkpoint("someone/camvid-model").num_classes == 4
    with pytest.raises(UserError, match="someone/absent: cannot fetch it from the Hub"):
        atrous.from_pretrained("someone/absent")


def test_push_to_hub_uploads_the_pretrained_folder(monkeypatch, tmp_path, capsys):
    from huggingface_hub import HfApi

    seen = {}

    def create_repo(self, repo_id, private=False, exist_ok=False, **_):
        seen["repo"] = (repo_id, private, exist_ok)
        return f"https://hub.example/{repo_id}"

    def upload_folder(self, repo_id, folder_path, commit_message, **_):
        seen["files"] = sorted(p.name for p in Path(folder_path).iterdir())
        seen["card"] = (Path(folder_path) / "README.md").read_text()

    monkeypatch.setattr(HfApi, "create_repo", create_repo)
    monkeypatch.setattr(HfApi, "upload_folder", upload_folder)
    url = atrous.push_to_hub(tiny(2), "me/tiny", private=True)
    assert url.endswith("me/tiny") and seen["repo"] == ("me/tiny", True, True)
    assert seen["files"] == ["README.md", "config.json", "model.safetensors"] and "2 classes" in seen["card"]
    # from the command line: export a checkpoint as a pretrained folder and upload it
    seen.clear()
    atrous.save_checkpoint(tiny(3), str(tmp_path / "m.safetensors"))
    assert main(["export", "--checkpoint", str(tmp_path / "m.safetensors"), "--format", "pretrained",
                 "--out", str(tmp_path / "shared"), "--push-to-hub", "me/three"]) == 0
    assert "uploaded to https://hub.example/me/three" in capsys.readouterr().out
    assert seen["repo"] == ("me/three", False, True) and "3 classes" in seen["card"]

    def refuse(self, repo_id, **_):
        raise RuntimeError("401 Client Error: Unauthorized\nmore detail")

    monkeypatch.setattr(HfApi, "create_repo", refuse)
    assert main(["export", "--checkpoint", str(tmp_path / "m.safetensors"), "--format", "pretrained",
                 "--out", str(tmp_path / "shared"), "--push-to-hub", "me/three"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "401 Client Error: Unauthorized" in err and "HF_TOKEN" in err


TRAIN_TINY = ["--model", "deeplab_v3plus", "--backbone", "resnet18", "--model-opt", "decoder_channels=32",
              "--model-opt", "aspp_channels=32", "--batch-size", "2", "--crop-size", "32", "--no-progress",
              "--dataset", "synthetic", "--synthetic-size", "32", "--synthetic-length", "4", "--iters", "2"]


def test_recipe_is_what_differs_from_the_defaults_without_the_runs_own_options():
    from atrous.training.config import TrainConfig, config_json, recipe

    config = config_json(TrainConfig(model="pspnet", dataset="camvid", out="runs/x", iters=3900, lr=0.001,
                                     momentum=0.9, device="cpu", workers=2, data_root="/data/camvid",
                                     save_pretrained="shared"))
    assert recipe(config) == {"model": "pspnet", "dataset": "camvid", "train_split": "train", "iters": 3900,
                              "lr": 0.001}


def test_train_save_pretrained_writes_a_card_with_the_recipe_and_the_evaluation(tmp_path, capsys):
    run, shared = tmp_path / "run", tmp_path / "shared"
    assert main(["train", *TRAIN_TINY, "--out", str(run), "--save-pretrained", str(shared)]) == 0
    assert f"wrote {shared} (a pretrained folder" in capsys.readouterr().out
    again = atrous.from_pretrained(str(shared))
    trained = atrous.load_checkpoint(str(run / "model.safetensors"))
    x = torch.randn(1, 3, 40, 48)
    with torch.no_grad():
        assert torch.equal(trained(x), again(x))
    val = json.loads((run / "metrics.json").read_text())["val"]
    card = (shared / "README.md").read_text()
    for words in ("iters: 2", 'dataset: "synthetic"', 'model: "deeplab_v3plus"', f"On split `val` ({val['images']} images)",
                  f"| mIoU | {100 * val['mIoU']:.2f} % |", "| index | class | colour (RGB) | IoU |",
                  f"| {100 * val['per_class_iou'][1]:.1f} |"):
        assert words in card, words
    assert "out:" not in card and "save_pretrained" not in card  # where it ran is not the recipe
    assert val["images"] == 4  # --synthetic-length holds for the evaluated split too
    config = json.loads((shared / "config.json").read_text())
    assert config["metrics"]["split"] == "val" and config["training"]["iters"] == 2


def test_save_pretrained_never_writes_into_a_folder_of_other_work(tmp_path, capsys):
    other = tmp_path / "notes"
    other.mkdir()
    (other / "README.md").write_text("mine")
    assert main(["train", *TRAIN_TINY, "--out", str(tmp_path / "run"), "--save-pretrained", str(other)]) == 2
    assert "--save-pretrained" in capsys.readouterr().err and (other / "README.md").read_text() == "mine"
    assert not (tmp_path / "run").exists()  # refused before any training


def test_export_pretrained_from_a_run_with_other_metrics_and_notes(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", *TRAIN_TINY, "--out", str(run), "--eval-split", ""]) == 0
    held_out = tmp_path / "held_out.json"
    held_out.write_text(json.dumps({"train": {}, "seq_test": {"mIoU": 0.4207, "pixel_accuracy": 0.8344,
                                                              "images": 101}}))
    shared = tmp_path / "shared"
    assert main(["export", "--checkpoint", str(run / "model.safetensors"), "--out", str(shared), "--format",
                 "pretrained", "--metrics", str(held_out), "--notes", "Scored by the same recipe without 0006R0."]) == 0
    card = (shared / "README.md").read_text()
    for words in ("iters: 2", "On split `seq_test` (101 images)", "| mIoU | 42.07 % |", "## Notes",
                  "Scored by the same recipe without 0006R0."):
        assert words in card, words
    # an `atrous eval --json` file: no split named
    (tmp_path / "eval.json").write_text(json.dumps({"mIoU": 0.5, "images": 3}))
    assert main(["export", "--checkpoint", str(run), "--out", str(tmp_path / "flat"), "--format", "pretrained",
                 "--metrics", str(tmp_path / "eval.json")]) == 0
    assert "On its evaluation data (3 images)" in (tmp_path / "flat" / "README.md").read_text()
    # from the pretrained folder itself: its card's recipe, evaluation and notes go along
    assert main(["export", "--checkpoint", str(shared), "--out", str(tmp_path / "copy"), "--format",
                 "pretrained"]) == 0
    copied = (tmp_path / "copy" / "README.md").read_text()
    assert all(words in copied for words in ("iters: 2", "| mIoU | 42.07 % |", "without 0006R0"))
    # again into the same folder: it holds a pretrained model, replaced
    assert main(["export", "--checkpoint", str(run), "--out", str(shared), "--format", "pretrained"]) == 0
    assert "Not recorded." in (shared / "README.md").read_text()  # the run itself was not evaluated
    capsys.readouterr()


@pytest.mark.parametrize("extra, fragment", [
    (["--format", "pretrained", "--int8"], "--int8 does not apply to --format pretrained"),
    (["--format", "pretrained", "--metrics", "absent.json"], "no such file: absent.json"),
    (["--notes", "hello"], "--notes applies to --format pretrained only"),
])
def test_export_pretrained_errors_are_one_line(tmp_path, capsys, extra, fragment):
    atrous.save_checkpoint(tiny(2), str(tmp_path / "m.safetensors"))
    out = tmp_path / ("m.onnx" if "--notes" in extra else "folder")
    assert main(["export", "--checkpoint", str(tmp_path / "m.safetensors"), "--out", str(out), *extra]) == 2
    err = capsys.readouterr().err.strip()
    assert fragment in err and len(err.splitlines()) == 1
    assert not out.exists()


def _folder_dataset(root: Path, classes: list[str], count: int = 4, size: int = 40) -> Path:
    rng = np.random.default_rng(0)
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    for i in range(count):
        mask = np.zeros((size, size), np.uint8)
        mask[:, size // 2:] = 1 + i % (len(classes) - 1)
        image = (rng.random((size, size, 3)) * 60 + mask[..., None] * 60).astype(np.uint8)
        Image.fromarray(image).save(root / "images" / f"{i}.png")
        Image.fromarray(mask).save(root / "masks" / f"{i}.png")
    (root / "classes.json").write_text(json.dumps({"classes": classes}))
    return root


def test_fine_tuning_from_a_checkpoint_on_other_classes(tmp_path, capsys):
    """--init-from a synthetic-scenes model onto a 3-class folder dataset with the backbone
    frozen and a 10x head: the report in metrics.json, the backbone (weights and batch-norm
    statistics) exactly as loaded, the head trained, the head's learning rate 10x."""
    common = ["--model", "deeplab_v3plus", "--backbone", "resnet18", "--model-opt", "decoder_channels=32",
              "--model-opt", "aspp_channels=32", "--batch-size", "2", "--crop-size", "32", "--no-progress",
              "--optimizer", "adamw", "--lr", "1e-3"]
    assert main(["train", *common, "--dataset", "synthetic", "--synthetic-size", "32", "--synthetic-length", "4",
                 "--iters", "2", "--eval-split", "", "--out", str(tmp_path / "first")]) == 0
    data = _folder_dataset(tmp_path / "data", ["background", "a", "b"])
    out = tmp_path / "second"
    assert main(["train", *common, "--dataset", "folder", "--data-root", str(data), "--iters", "3",
                 "--init-from", str(tmp_path / "first" / "model.safetensors"), "--freeze", "backbone",
                 "--lr-mult", "head=10", "--eval-split", "", "--out", str(out)]) == 0
    assert "tensors matched, 2 re-initialised (classifier.bias, classifier.weight)" in capsys.readouterr().out
    report = json.loads((out / "metrics.json").read_text())["init_from"]
    assert sorted(report["reinitialised"]) == ["classifier.bias", "classifier.weight"]
    first = atrous.load_checkpoint(str(tmp_path / "first" / "model.safetensors")).state_dict()
    second = atrous.load_checkpoint(str(out / "model.safetensors")).state_dict()
    backbone = [k for k in second if ".backbone." in f".{k}" or k.startswith("backbone.")]
    assert backbone and all(torch.equal(first[k], second[k]) for k in backbone)  # weights and BN statistics
    trained = [k for k in second if k not in backbone and not k.startswith("classifier.")
               and "running" not in k and "num_batches" not in k and not torch.equal(first[k], second[k])]
    assert trained  # the head moved
    state = torch.load(out / "train_state.pt", weights_only=True)
    assert [g["lr_mult"] for g in state["optimizer"]["param_groups"]] == [10.0]  # only the head trains


def test_freeze_bn_keeps_every_statistic_and_lr_mult_scales_each_group(tmp_path):
    from atrous.training import TrainConfig, Trainer

    cfg = TrainConfig(model="deeplab_v3plus", backbone="resnet18", model_options={"decoder_channels": 32,
                      "aspp_channels": 32}, dataset="synthetic", synthetic_size=32, synthetic_length=4, iters=2,
                      batch_size=2, crop_size=32, out=str(tmp_path / "run"), progress=False, freeze_bn=True,
                      lr_mult={"backbone": 0.1, "aspp": 5}, optimizer="sgd", lr=0.01, eval_split=None)
    trainer = Trainer(cfg)
    stats = {k: v.clone() for k, v in trainer.model.state_dict().items() if "running" in k}
    trainer.run()
    after = trainer.model.state_dict()
    assert stats and all(torch.equal(v, after[k]) for k, v in stats.items())
    lrs = {g["lr_mult"]: g["lr"] for g in trainer.optimizer.param_groups}
    assert set(lrs) == {0.1, 1.0, 5.0}
    assert lrs[5.0] == pytest.approx(5 * lrs[1.0]) and lrs[0.1] == pytest.approx(0.1 * lrs[1.0])
    with pytest.raises(UserError, match="^lr_mult nope: not backbone, head or a parameter-name prefix"):
        Trainer(TrainConfig(**{**cfg.__dict__, "lr_mult": {"nope": 2}, "out": str(tmp_path / "x")}))
    with pytest.raises(UserError, match="^lr_mult head must be a finite number"):
        TrainConfig(**{**cfg.__dict__, "lr_mult": {"head": float("nan")}}).validate()


@pytest.mark.parametrize("name", ["deeplab_v3", "deeplab_v3plus", "pspnet", "deeplab_v2"])
def test_set_output_stride_is_the_model_built_at_that_stride(name):
    """Trained at 16, evaluated at 8 (DeepLab v3, Sec. 4.1): the same weights in the model
    create_model builds at 8 give exactly the same logits, ASPP rates doubled included."""
    torch.manual_seed(0)
    model = atrous.create_model(name, 4, backbone="resnet18", output_stride=16).eval()
    reference = atrous.create_model(name, 4, backbone="resnet18", output_stride=8).eval()
    reference.load_state_dict(model.state_dict())
    x = torch.randn(1, 3, 53, 71)
    with torch.no_grad():
        at_16 = model(x)
        assert model.set_output_stride(8) is model and model.config["output_stride"] == 8
        assert torch.equal(model(x), reference(x))
        assert not torch.allclose(at_16, model(x))  # the stride did change the computation
    if name == "deeplab_v3":
        rates = [m.dilation[0] for m in model.aspp.modules() if isinstance(m, torch.nn.Conv2d) and m.kernel_size == (3, 3)]
        assert rates == [12, 24, 36]


def test_a_model_that_cannot_change_its_stride_says_so(tmp_path, capsys):
    with pytest.raises(ValueError, match="model 'unet' cannot run at output stride 8"):
        atrous.create_model("unet", 3, backbone="resnet18").set_output_stride(8)
    atrous.save_checkpoint(atrous.create_model("unet", 3, backbone="resnet18"), str(tmp_path / "u.safetensors"))
    code = main(["eval", "--checkpoint", str(tmp_path / "u.safetensors"), "--dataset", "synthetic",
                 "--output-stride", "8", "--max-images", "1"])
    err = capsys.readouterr().err
    assert code == 2 and "--output-stride 8: model 'unet' cannot run at output stride 8" in err
    assert len(err.strip().splitlines()) == 1


def test_eval_at_output_stride_8_of_a_model_trained_at_16(tmp_path, capsys):
    model = tiny(7)  # synthetic scenes have 7 classes
    atrous.save_checkpoint(model, str(tmp_path / "m.safetensors"))
    args = ["eval", "--checkpoint", str(tmp_path / "m.safetensors"), "--dataset", "synthetic", "--max-images", "2",
            "--synthetic-size", "48", "--precision", "fp32", "--no-progress"]
    assert main([*args, "--output-stride", "8", "--json", str(tmp_path / "m8.json")]) == 0
    assert main([*args, "--json", str(tmp_path / "m16.json")]) == 0
    at_8, at_16 = (json.loads((tmp_path / f).read_text()) for f in ("m8.json", "m16.json"))
    assert at_8["inference"]["output_stride"] == 8 and at_16["inference"]["output_stride"] is None


@pytest.mark.parametrize("coarse, fine", [("fcn32s", "fcn16s"), ("fcn16s", "fcn8s")])
def test_fcn_staged_training_starts_where_the_previous_stage_ended(tmp_path, coarse, fine):
    """Long et al., Sec. 4.2: FCN-16s is initialised from a trained FCN-32s (8s from 16s) and
    its new skip score layers start at zero, "so that the net starts with unmodified
    predictions". Here: every shared tensor is loaded, the new score layers add exactly zero,
    and the coarse scores are the previous stage's exactly. The logits then differ only by
    the interpolation path (2x then 16x bilinear instead of 32x, as in the paper's nets)."""
    torch.manual_seed(0)
    trained = atrous.create_model(coarse, 4).eval()
    with torch.no_grad():
        for parameter in trained.parameters():  # "trained": skip scores no longer zero, in 16s
            parameter.add_(0.01 * torch.randn_like(parameter))
    atrous.save_checkpoint(trained, str(tmp_path / "coarse.safetensors"))
    model = atrous.create_model(fine, 4).eval()
    report = atrous.load_weights(model, str(tmp_path / "coarse.safetensors"))
    new_skip = len(model.skips) - 1  # the score layer this stage adds
    assert f"score_skips.{new_skip}.weight" in report.missing and not report.unused
    x = torch.randn(1, 3, 70, 90)
    with torch.no_grad():
        features = model.backbone(torch.nn.functional.pad(x, (0, 6, 0, 26)))
        assert torch.equal(model.head(features[-1]), trained.head(trained.backbone(
            torch.nn.functional.pad(x, (0, 6, 0, 26)))[-1]))
        index = model.skips[new_skip]
        assert torch.count_nonzero(model.score_skips[new_skip](features[index - 2])) == 0
    with pytest.raises(UserError, match="needs the same architecture or its family"):
        atrous.load_weights(atrous.create_model("segnet", 4), str(tmp_path / "coarse.safetensors"))


def test_from_torchvision_reads_published_weights_from_torchs_cache(tmp_path, monkeypatch):
    """atrous.from_torchvision(name, weights="DEFAULT") goes through torchvision's weights
    API; torch.hub loads $TORCH_HOME/hub/checkpoints/<the URL's file name> without any
    download when it is there, which is where this test puts a state dict of its own."""
    import os

    import torchvision
    from torchvision.models import get_model_weights

    name = "lraspp_mobilenet_v3_large"
    torch.manual_seed(0)
    reference = torchvision.models.get_model(name, weights=None, weights_backbone=None, num_classes=21).eval()
    url = get_model_weights(name).DEFAULT.url
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    cache = tmp_path / "hub" / "checkpoints"
    cache.mkdir(parents=True)
    torch.save(reference.state_dict(), cache / os.path.basename(url))
    model = atrous.from_torchvision(name, weights="DEFAULT").eval()
    x = torch.randn(1, 3, 64, 80)
    with torch.no_grad():
        assert torch.allclose(model(x), reference(x)["out"], atol=1e-5)
    with pytest.raises(ValueError, match="has no weights 'NOPE'; choose one of: DEFAULT"):
        atrous.from_torchvision(name, weights="NOPE")
    with pytest.raises(ValueError, match="not both or neither"):
        atrous.from_torchvision(name)


def test_init_from_torchvision_published_weights_onto_other_classes(tmp_path, monkeypatch):
    """--init-from torchvision:NAME: torchvision's published model, converted, loaded into
    the atrous model being fine-tuned (here 3 classes instead of 21: the classifier anew)."""
    import os

    import torchvision
    from torchvision.models import get_model_weights

    name = "lraspp_mobilenet_v3_large"
    torch.manual_seed(0)
    published = torchvision.models.get_model(name, weights=None, weights_backbone=None, num_classes=21)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    (tmp_path / "hub" / "checkpoints").mkdir(parents=True)
    torch.save(published.state_dict(), tmp_path / "hub" / "checkpoints" / os.path.basename(
        get_model_weights(name).DEFAULT.url))
    reference = atrous.from_torchvision(name, weights="DEFAULT")
    config = reference.config
    model = atrous.create_model(config["name"], 3, backbone=config["backbone"], **config["options"])
    report = atrous.load_weights(model, f"torchvision:{name}")
    assert report.reinitialised and all("classifier" in k for k in report.reinitialised)
    assert not report.unused and not report.missing
    with pytest.raises(UserError, match="torchvision:nope: from_torchvision supports"):
        atrous.load_weights(model, "torchvision:nope")
