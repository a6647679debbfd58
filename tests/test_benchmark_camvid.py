"""The CamVid benchmark's pieces: the smp adapters, the recipes, the generated tables."""

from __future__ import annotations

import importlib
import sys
import unittest.mock
from pathlib import Path

import numpy as np
import pytest
import torch

from .conftest import REPO

# the CPU recipes (the papers' GPU recipes, configs/{voc,cityscapes,ade20k}: tests/test_recipes.py)
RECIPES = sorted(p for p in (REPO / "configs").glob("**/*.yaml")
                 if p.parent.name not in ("crf", "voc", "cityscapes", "ade20k",  # the papers' recipes: test_recipes.py
                                          "pascal_context", "pascal_person_part", "sift_flow", "nyudv2", "sun_rgbd"))
# what the CamVid protocol fixes for every row (docs/benchmarks.md)
PROTOCOL_KEYS = ("dataset", "iters", "batch_size", "crop_size", "scale_min", "scale_max", "optimizer", "lr",
                 "weight_decay", "class_weights", "precision", "channels_last", "flip", "jitter", "poly_power",
                 "warmup_iters", "seed")


def import_benchmark(name: str):
    sys.path.insert(0, str(REPO / "benchmarks"))
    try:
        return importlib.import_module(name)
    finally:
        sys.path.remove(str(REPO / "benchmarks"))


@pytest.mark.parametrize("name, divisor", [("smp_unet", 32), ("smp_deeplabv3plus", 16)])
def test_smp_adapter_any_size(name: str, divisor: int) -> None:
    pytest.importorskip("segmentation_models_pytorch", reason="smp (the bench extra) is not installed")
    import_benchmark("smp_models")
    import atrous

    assert name in atrous.list_models()
    torch.manual_seed(0)
    model = atrous.create_model(name, 11, backbone="resnet18").eval()
    assert model.divisor == divisor
    with torch.no_grad():
        logits = model(torch.randn(1, 3, 97, 131))
    assert logits.shape == (1, 11, 97, 131)


def test_smp_adapter_checkpoint_round_trip(tmp_path: Path) -> None:
    pytest.importorskip("segmentation_models_pytorch", reason="smp (the bench extra) is not installed")
    import_benchmark("smp_models")
    import atrous

    model = atrous.create_model("smp_deeplabv3plus", 3, backbone="resnet18", output_stride=8).eval()
    assert model.divisor == 8
    atrous.save_checkpoint(model, str(tmp_path / "m.safetensors"))
    again = atrous.load_checkpoint(str(tmp_path / "m.safetensors")).eval()
    x = torch.randn(1, 3, 40, 56)
    with torch.no_grad():
        torch.testing.assert_close(again(x), model(x))


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: str(p.relative_to(REPO / "configs")))
def test_recipe_parses(path: Path) -> None:
    """Every recipe, read by the CLI's config reader, makes a valid TrainConfig."""
    from atrous.training.trainer import TrainConfig

    bench = import_benchmark("camvid")
    values = bench.read_recipe(path)
    cfg = TrainConfig(**values)
    cfg.validate()
    assert cfg.iters is not None and cfg.pretrained_backbone is None  # an iteration budget, from scratch
    if path.parent.name == "camvid":
        assert cfg.dataset == "camvid" and cfg.iters == bench.PROTOCOL_ITERS


def test_camvid_recipes_share_the_protocol() -> None:
    from atrous.training.trainer import TrainConfig

    bench = import_benchmark("camvid")
    reference = TrainConfig(**bench.read_recipe(REPO / "configs/camvid/deeplab_v3plus_resnet18.yaml"))
    camvid = [p for p in RECIPES if p.parent.name == "camvid"]
    for path in camvid:
        cfg = TrainConfig(**bench.read_recipe(path))
        for key in PROTOCOL_KEYS:
            assert getattr(cfg, key) == getattr(reference, key), f"{path.name}: {key}"
    import atrous

    covered = {TrainConfig(**bench.read_recipe(p)).model for p in camvid}
    assert set(atrous.list_models()) - {"smp_unet", "smp_deeplabv3plus"} <= covered


def test_generated_tables() -> None:
    bench = import_benchmark("camvid")
    val = {"mIoU": 0.5, "mean_accuracy": 0.6, "pixel_accuracy": 0.8, "fw_iou": 0.7,
           "per_class_iou": [0.5] * 11, "class_names": [f"c{i}" for i in range(11)], "images": 101}
    base = dict(config="configs/camvid/x.yaml", backbone="resnet18", dataset="camvid", params_m=1.0, gflops=2.0, latency_ms=3.0, iters=20,
                train_seconds=40.0, threads=1, smoke=True)
    rows = {
        "camvid/unet_resnet18": dict(base, recipe="camvid/unet_resnet18", model="unet", peer=False,
                                     s_per_iter=2.0, val=val),
        "camvid/smp_unet_resnet18": dict(base, recipe="camvid/smp_unet_resnet18", model="smp_unet", peer=True,
                                         s_per_iter=3.0, val=val),
        "camvid_best/unet_long": dict(base, recipe="camvid_best/unet_long", config="configs/camvid_best/unet_long.yaml",
                                      model="unet", peer=False, s_per_iter=2.0, val=dict(val, mIoU=0.56),
                                      val_crf=dict(val, mIoU=0.58)),
        "isbi2012/unet": dict(base, recipe="isbi2012/unet", model="unet", peer=False, dataset="isbi2012",
                              s_per_iter=1.0, val=dict(val, foreground_iou=0.9, membrane_iou=0.6, pixel_error=0.1)),
    }
    text = bench.generated_section({"rows": rows})
    assert text.startswith(bench.BEGIN) and text.endswith(bench.END)
    assert "| unet_resnet18 | smp_unet_resnet18 | 2.00 | 3.00 | 1.50 |" in text  # smp / atrous time
    assert "| unet (smoke) | unet | 1.00 | 2.0 | 3 | 20 | 40 | 1.00 | 90.0 | 60.0 | 10.00 | 50.0 |" in text
    assert "not results" in text
    protocol, search = text.split("best-recipe search")
    assert "| unet_long (smoke) |" in search and "unet_long" not in protocol
    assert "| 56.0 | 60.0 | 80.0 | 58.0 |" in search and "DenseCRF" not in protocol


def test_heldout_tables_and_seeds() -> None:
    bench = import_benchmark("camvid")
    scores = {"mIoU": 0.5, "mean_accuracy": 0.6, "pixel_accuracy": 0.8, "fw_iou": 0.7,
              "per_class_iou": [0.25] * 11, "class_names": [f"c{i}" for i in range(11)], "images": 101}
    base = dict(config="configs/camvid/unet_resnet18.yaml", recipe_name="camvid/unet_resnet18", backbone="resnet18",
                dataset="camvid", model="unet", peer=False, params_m=1.0, gflops=2.0, latency_ms=3.0, iters=300,
                crop_size=192, train_seconds=600.0, s_per_iter=2.0, threads=2, smoke=False, protocol="light",
                train_split="seq_train", heldout_split="seq_test")
    rows = {f"camvid/unet_resnet18@light@seed{seed}": dict(
        base, recipe=f"camvid/unet_resnet18@light@seed{seed}", seed=seed, val=dict(scores, mIoU=0.50 + seed / 100),
        heldout=dict(scores, mIoU=0.40 + seed / 100), precision="bf16" if seed else "fp32",
        native_bf16=bool(seed)) for seed in (0, 1, 2)}
    text = bench.generated_section({"rows": rows})
    assert "Light protocol (300 iterations, 192x192 crops)" in text and "Earlier rows" not in text
    assert ("| unet_resnet18@light@seed1 | unet | resnet18 | 1.00 | 2.0 | 3 | 300 | 192 | 600 | 2.00 | bf16 "
            "| 51.0 | **41.0** |") in text
    assert "| 2.00 | fp32 | 50.0 | **40.0** |" in text
    assert "with and without native bf16" in text  # their s/iter do not compare
    rows["camvid/unet_resnet18@light@seed0"].update(precision="bf16", native_bf16=True)
    assert "with and without native bf16" not in bench.generated_section({"rows": rows})
    assert "| unet_resnet18 | light | 0, 1, 2 | 51.0 ± 1.0 | 41.0 ± 1.0 |" in text  # mean ± sample std
    assert "| unet_resnet18@light@seed2 | " + " | ".join(["25.0"] * 11) + " |" in text
    path = REPO / "configs/camvid/unet_resnet18.yaml"
    assert bench.row_key(path, "light", 1) == "camvid/unet_resnet18@light@seed1"
    assert bench.row_key(path, "recipe", None) == "camvid/unet_resnet18"
    assert bench.row_key(path, "light", 0) == "camvid/unet_resnet18@light"  # the recipe's own seed
    cfg = bench.train_config(path, out="x", iters=None, resume=False, overwrite=False, progress=False,
                             overrides=bench.run_overrides("light", 1))
    assert (cfg.iters, cfg.crop_size, cfg.seed, cfg.train_split) == (300, 192, 1, "seq_train")
    assert bench.heldout_split(cfg) == "seq_test"
    found = bench.commands(path, cfg, None, overrides=bench.run_overrides("light", 1))
    assert "--iters 300 --crop-size 192 --seed 1" in found["train"]
    assert found["eval_heldout"].endswith("--split seq_test --precision fp32")
    assert cfg.eval_split is None  # the benchmark evaluates the checkpoint itself, afterwards
    curve = REPO / "configs/camvid_best/deeplab_v3plus_resnet18_60min.yaml"  # eval_every: a curve
    cfg = bench.train_config(curve, out="x", iters=None, resume=False, overwrite=False, progress=False)
    assert (cfg.eval_split, cfg.eval_every) == ("seq_test", 500)


def test_camvid_figure_draws_examples_and_curves(tmp_path) -> None:
    figure = import_benchmark("camvid_figure")
    from PIL import Image

    log = tmp_path / "log.jsonl"
    log.write_text('{"epoch": 1, "step": 46, "loss": 1.5, "lr": 0.001, "elapsed_s": 60}\n'
                   '{"step": 50, "val_mIoU": 0.3, "val_pixel_accuracy": 0.7, "elapsed_s": 65}\n'
                   '{"epoch": 2, "step": 92, "loss": 1.2, "lr": 0.0005, "elapsed_s": 120}\n'
                   '{"step": 100, "val_mIoU": 0.4, "val_pixel_accuracy": 0.8, "elapsed_s": 130}\n'
                   '{"event": "finished", "step": 100, "elapsed_s": 130}\n')
    figure.curves_figure(str(log), "test", str(tmp_path / "curves.png"))
    held_out = tmp_path / "held_out.jsonl"
    held_out.write_text(log.read_text().replace("val_", "seq_test_"))
    figure.curves_figure(str(held_out), "test", str(tmp_path / "plain.png"))
    figure.curves_figure(str(held_out), "test", str(tmp_path / "target.png"), {"ENet": 0.35})
    plain, target = (np.asarray(Image.open(tmp_path / n).convert("L")) for n in ("plain.png", "target.png"))
    assert plain.shape == target.shape and (plain != target).sum() > 100  # the reference line is drawn
    truth = torch.randint(-1, 3, (24, 32)).numpy()
    pred = truth.clip(0, None)
    assert figure.accuracy(pred, truth) == 1.0
    image = torch.randint(0, 256, (24, 32, 3), dtype=torch.uint8).numpy()
    palette = torch.tensor([[255, 0, 0], [0, 255, 0], [0, 0, 255]], dtype=torch.uint8).numpy()
    coloured = figure.colour(truth, palette)
    assert (coloured[truth < 0] == 0).all() and (coloured[truth == 1] == [0, 255, 0]).all()
    figure.examples_figure([(image, truth, pred, pred)] * 2, palette, ["a", "b", "c"], str(tmp_path / "ex.png"))
    for name in ("curves.png", "ex.png"):
        assert Image.open(tmp_path / name).size[0] > 300


def test_store_row_merges_with_what_is_on_disk(tmp_path, monkeypatch) -> None:
    bench = import_benchmark("camvid")
    monkeypatch.setattr(bench, "RESULTS", tmp_path / "camvid.json")
    bench.store_row({"recipe": "camvid/a", "x": 1})
    stale = bench.load_results(fresh=False)  # what a second run read when it started
    bench.store_row({"recipe": "camvid/b", "x": 2})  # another run finishes first
    assert set(stale["rows"]) == {"camvid/a"}
    assert set(bench.store_row({"recipe": "camvid/a", "x": 3})["rows"]) == {"camvid/a", "camvid/b"}
    assert bench.load_results(fresh=False)["rows"]["camvid/a"]["x"] == 3
    assert bench.store_row(None, fresh=True)["rows"] == {}


def test_remeasure_updates_size_and_latency_only(tiny_checkpoint, monkeypatch) -> None:
    bench = import_benchmark("camvid")
    monkeypatch.setattr(bench, "TIMED", 1)
    monkeypatch.setitem(bench.IMAGE_SIZES, "camvid", (64, 96))
    row = {"recipe": "camvid/x", "dataset": "camvid", "checkpoint": str(tiny_checkpoint), "peer": False,
           "params_m": 0.0, "latency_ms": 0.0, "val": {"mIoU": 0.4}}
    bench.remeasure(row)
    import atrous

    model = atrous.load_checkpoint(str(tiny_checkpoint))
    assert row["params_m"] == pytest.approx(sum(p.numel() for p in model.parameters()) / 1e6)
    assert row["latency_ms"] > 0 and row["gflops"] > 0 and row["latency_size"] == [64, 96]
    assert row["val"] == {"mIoU": 0.4}


@pytest.mark.parametrize("path", sorted((REPO / "configs" / "crf").glob("*.yaml")), ids=lambda p: p.name)
def test_crf_parameter_files_build_their_crf(path: Path) -> None:
    """configs/crf/*.yaml are `atrous eval --crf dense --crf-params` files."""
    import atrous
    from atrous.inference.refinement import build_crf

    model = atrous.create_model("unet", 11, backbone="resnet18")
    crf = build_crf("dense", model, str(path))
    values = bench_yaml(path)
    assert crf.num_iterations == values["num_iterations"]
    assert float(crf.bi_xy_std) == values["bi_xy_std"] and float(crf.bi_rgb_std) == values["bi_rgb_std"]


def bench_yaml(path: Path) -> dict:
    import yaml

    return yaml.safe_load(path.read_text())


def test_camvid_figure_draws_the_heldout_gap(tmp_path) -> None:
    """One bar pair per recipe of the protocol (seeds averaged); other protocols, smoke rows
    and rows without a held-out score are left out; no row at all is a one-line exit."""
    import json

    from PIL import Image

    figure = import_benchmark("camvid_figure")
    scores = {"mIoU": 0.5}
    rows = {f"camvid/unet@light@seed{s}": dict(recipe_name="camvid/unet", protocol="light", smoke=False,
                                                val=scores, heldout=dict(mIoU=0.3 + s / 100)) for s in (0, 1, 2)}
    rows["camvid/fcn32s@light"] = dict(recipe_name="camvid/fcn32s", protocol="light", smoke=False, val=scores,
                                       heldout=scores)
    rows["camvid/segnet@light"] = dict(recipe_name="camvid/segnet", protocol="light", smoke=True, val=scores,
                                       heldout=scores)
    rows["camvid/pspnet"] = dict(recipe_name="camvid/pspnet", protocol="recipe", smoke=False, val=scores,
                                 heldout=scores)
    rows["camvid/old"] = dict(recipe_name="camvid/old", val=scores)
    results = tmp_path / "camvid.json"
    results.write_text(json.dumps({"rows": rows}))
    assert figure.gap_figure(results, "light", str(tmp_path / "gap.png")) == 2
    assert Image.open(tmp_path / "gap.png").size[0] > 150
    with pytest.raises(SystemExit, match="no sequence-held-out rows of protocol 'x'"):
        figure.gap_figure(results, "x", str(tmp_path / "none.png"))


def test_camvid_figure_draws_the_losses_of_several_runs(tmp_path) -> None:
    """One line per run from its log.jsonl (epoch records only); a malformed --logs item is a
    usage error."""
    import json

    from PIL import Image

    figure = import_benchmark("camvid_figure")
    logs = {}
    for name, losses in (("lr 1e-3", [56.3, 3.2, 2.4]), ("lr 3e-4", [2.3, 1.9, 1.6])):
        log = tmp_path / f"{name}.jsonl"
        records = [dict(epoch=i + 1, step=34 * (i + 1), loss=v) for i, v in enumerate(losses)]
        log.write_text("\n".join(json.dumps(r) for r in records + [{"event": "finished", "step": 102}]) + "\n")
        logs[name] = str(log)
    assert [r["loss"] for r in figure.read_epochs(logs["lr 1e-3"])] == [56.3, 3.2, 2.4]
    figure.losses_figure(logs, "RefineNet", str(tmp_path / "losses.png"))
    assert Image.open(tmp_path / "losses.png").size[0] > 300
    argv = ["camvid_figure.py", "--losses", str(tmp_path / "x.png"), "--logs", "no-equals-sign"]
    with unittest.mock.patch("sys.argv", argv), pytest.raises(SystemExit):
        figure.main()
    assert not (tmp_path / "x.png").exists()


def test_first_steps_reproduces_the_real_runs_losses(tmp_path) -> None:
    """benchmarks/first_steps.py runs the recipe's own training: its per-step losses average
    to the epoch loss the real run logs (same data, schedule and optimiser); --set overrides."""
    import json

    import yaml

    from atrous.training.trainer import TrainConfig, train

    first_steps = import_benchmark("first_steps")
    recipe = dict(model="unet", model_options={"base_channels": 4}, dataset="synthetic", synthetic_size=32,
                  synthetic_length=4, crop_size=32, batch_size=2, iters=4, optimizer="adamw", lr=0.01,
                  eval_split=None, progress=False, out=str(tmp_path / "real"))
    train(TrainConfig(**recipe))
    logged = [json.loads(line) for line in (tmp_path / "real" / "log.jsonl").read_text().splitlines()]
    epochs = [r["loss"] for r in logged if "epoch" in r]
    precision, losses = first_steps.first_losses(dict(recipe, out=str(tmp_path / "probe")), 4)
    assert precision == "fp32" and len(losses) == 4
    assert epochs == pytest.approx([(losses[0] + losses[1]) / 2, (losses[2] + losses[3]) / 2], rel=1e-4)
    assert first_steps.parse_sets(["lr=0.0003", "precision=fp32"]) == {"lr": 0.0003, "precision": "fp32"}
    with pytest.raises(SystemExit, match="KEY=VALUE"):
        first_steps.parse_sets(["lr"])
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    assert first_steps.main([str(path), "--steps", "2", "--out", str(tmp_path / "cli"), "--set", "lr=0.001"]) == 0
