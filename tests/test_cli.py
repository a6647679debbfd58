"""The command line: each bad input ends with a non-zero exit and one line naming the file
or option, no traceback; nothing already written is lost."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from atrous.cli import main
from tests.conftest import REPO


def run(capsys, *argv: str) -> tuple[int, str, str]:
    try:
        code = main(list(argv))
    except SystemExit as exit_:  # argparse's usage errors
        code = exit_.code
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def assert_one_line_error(err: str, *fragments: str) -> None:
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert "Traceback" not in err
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])


def _folder_dataset(root, *, mask_size=(16, 12), label=1):
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    Image.fromarray(np.zeros((12, 16, 3), np.uint8)).save(root / "images" / "x.png")
    mask = np.zeros(mask_size[::-1], np.uint8)
    mask[0, 0] = label
    Image.fromarray(mask).save(root / "masks" / "x.png")
    (root / "classes.json").write_text(json.dumps({"classes": ["a", "b"]}))
    return root


def test_models_lists_every_model(capsys):
    import atrous

    code, out, _ = run(capsys, "models")
    assert code == 0
    names = [line.split()[0] for line in out.splitlines()]
    assert names == atrous.list_models()
    assert all(len(line.split(None, 1)) == 2 for line in out.splitlines())


@pytest.mark.parametrize(
    ("argv", "fragments"),
    [
        (["train", "--model", "nonet", "--dataset", "synthetic", "--out", "{tmp}/a", "--iters", "1"],
         ["--model nonet", "unknown model"]),
        (["train", "--model", "unet", "--dataset", "imagenet", "--out", "{tmp}/a"], ["unknown dataset 'imagenet'"]),
        (["train", "--model", "unet", "--dataset", "camvid", "--data-root", "{tmp}/none", "--out", "{tmp}/a"],
         ["CamVid folder not found", "none"]),
        (["train", "--model", "unet", "--dataset", "synthetic", "--out", "{tmp}/a", "--iters", "0"], ["--iters"]),
        (["train", "--model", "unet", "--dataset", "synthetic", "--out", "{tmp}/a", "--iters", "x"],
         ["--iters", "invalid int value"]),
        (["train", "--model", "unet", "--dataset", "synthetic", "--out", "{tmp}/a", "--model-opt", "wings=2"],
         ["no option 'wings'"]),
        (["train", "--model", "deeplab_v3", "--backbone", "nosuchnet", "--dataset", "synthetic", "--out", "{tmp}/a"],
         ["unknown backbone 'nosuchnet'"]),
        (["train", "--config", "{tmp}/missing.yaml"], ["--config file not found", "missing.yaml"]),
        (["train", "--model", "unet", "--dataset", "synthetic", "--out", "{tmp}/a",
          "--pretrained-backbone", "{tmp}/w.pth", "--backbone", "resnet18"], ["w.pth"]),
        (["eval", "--checkpoint", "{tmp}/nope.safetensors", "--dataset", "synthetic"],
         ["checkpoint not found", "nope.safetensors"]),
        (["predict", "--checkpoint", "{tmp}/nope.safetensors", "x.png", "--out", "{tmp}/o"],
         ["checkpoint not found"]),
        (["bogus"], ["invalid choice"]),
    ],
)
def test_bad_inputs_end_in_one_line(capsys, tmp_path, argv, fragments):
    argv = [a.replace("{tmp}", str(tmp_path)) for a in argv]
    fragments = [f.replace("{tmp}", str(tmp_path)) for f in fragments]
    code, _, err = run(capsys, *argv)
    assert code == 2
    assert_one_line_error(err, *fragments)


def test_bad_config_keys_and_yaml(capsys, tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text("model: unet\ndataset: synthetic\nout: x\nlearning_rate: 3\n")
    code, _, err = run(capsys, "train", "--config", str(config))
    assert code == 2
    assert_one_line_error(err, "c.yaml", "unknown option 'learning_rate'")
    config.write_text("model: [unet\n")
    code, _, err = run(capsys, "train", "--config", str(config))
    assert_one_line_error(err, "c.yaml", "not valid YAML")


def test_folder_mask_mismatch_and_labels(capsys, tmp_path):
    root = _folder_dataset(tmp_path / "size", mask_size=(15, 12))
    code, _, err = run(capsys, "train", "--model", "unet", "--dataset", "folder", "--data-root", str(root),
                       "--out", str(tmp_path / "o"), "--iters", "1", "--crop-size", "16", "--no-progress")
    assert code == 2
    assert_one_line_error(err, "x.png", "15x12", "16x12")
    root = _folder_dataset(tmp_path / "labels", label=9)
    code, _, err = run(capsys, "train", "--model", "unet", "--dataset", "folder", "--data-root", str(root),
                       "--out", str(tmp_path / "o2"), "--iters", "1", "--crop-size", "16", "--no-progress")
    assert code == 2
    assert_one_line_error(err, "x.png", "label values [9]")


def test_eval_and_predict_errors(capsys, tmp_path, tiny_checkpoint):
    corrupt = tmp_path / "corrupt.png"
    corrupt.write_bytes(b"\x89PNG broken")
    good = tmp_path / "good.png"
    Image.fromarray(np.zeros((20, 30, 3), np.uint8)).save(good)
    out = tmp_path / "pred"
    code, _, err = run(capsys, "predict", "--checkpoint", str(tiny_checkpoint), str(good), str(corrupt),
                       "--out", str(out), "--no-progress")
    assert code == 2
    assert_one_line_error(err, "cannot read image", "corrupt.png")
    assert not out.exists(), "a bad input stops the run before anything is written"
    code, _, err = run(capsys, "predict", "--checkpoint", str(tiny_checkpoint), str(tmp_path / "gone.png"),
                       "--out", str(out), "--no-progress")
    assert_one_line_error(err, "image not found", "gone.png")
    not_ckpt = tmp_path / "model.safetensors"
    not_ckpt.write_text("hello")
    code, _, err = run(capsys, "eval", "--checkpoint", str(not_ckpt), "--dataset", "synthetic")
    assert code == 2
    assert_one_line_error(err, "model.safetensors", "not a readable")
    root = _folder_dataset(tmp_path / "two")
    code, _, err = run(capsys, "eval", "--checkpoint", str(tiny_checkpoint), "--dataset", "folder",
                       "--data-root", str(root), "--split", "train", "--no-progress")
    assert code == 2
    assert_one_line_error(err, "predicts 7 classes", "has 2")


def test_eval_and_predict_work(capsys, tmp_path, tiny_checkpoint):
    metrics_file = tmp_path / "m.json"
    code, out, _ = run(capsys, "eval", "--checkpoint", str(tiny_checkpoint), "--dataset", "synthetic",
                       "--synthetic-size", "64", "--max-images", "8", "--json", str(metrics_file), "--trimap", "3",
                       "--no-progress")
    assert code == 0
    assert "mIoU" in out and "boat" in out and "trimap 3px" in out
    metrics = json.loads(metrics_file.read_text())
    assert metrics["images"] == 8 and 0 <= metrics["mIoU"] <= 1
    image = tmp_path / "scene.png"
    Image.fromarray(np.full((41, 59, 3), 90, np.uint8)).save(image)
    code, out, _ = run(capsys, "predict", "--checkpoint", str(tiny_checkpoint), str(image), "--out",
                       str(tmp_path / "p"), "--no-progress")
    assert code == 0
    assert sorted(p.name for p in (tmp_path / "p").iterdir()) == ["scene.png", "scene_overlay.png"]


def test_real_process_exit_code_and_no_traceback(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "atrous", "eval", "--checkpoint", str(tmp_path / "x.safetensors"),
         "--dataset", "synthetic"],
        capture_output=True, text=True, cwd=REPO, timeout=120,
    )
    assert result.returncode == 2
    assert_one_line_error(result.stderr, "checkpoint not found")


def test_predict_never_replaces_an_input(capsys, tmp_path, tiny_checkpoint):
    image = tmp_path / "a.png"
    Image.fromarray(np.full((20, 20, 3), 50, np.uint8)).save(image)
    before = image.read_bytes()
    code, _, err = run(capsys, "predict", "--checkpoint", str(tiny_checkpoint), str(image), "--out", str(tmp_path))
    assert code == 2
    assert_one_line_error(err, "would replace an input image")
    assert image.read_bytes() == before
    other = tmp_path / "a_overlay.jpg"
    Image.fromarray(np.full((20, 20, 3), 50, np.uint8)).save(other)
    code, _, err = run(capsys, "predict", "--checkpoint", str(tiny_checkpoint), str(image), str(other),
                       "--out", str(tmp_path / "o"))
    assert_one_line_error(err, "two outputs would be written", "a_overlay.png")


def test_resume_takes_the_saved_configuration(capsys, tmp_path):
    out = str(tmp_path / "run")
    common = ["--dataset", "synthetic", "--synthetic-size", "64", "--synthetic-length", "4", "--crop-size", "64",
              "--batch-size", "2", "--eval-split", "", "--no-progress"]
    code, _, _ = run(capsys, "train", "--model", "deeplab_v3plus", "--backbone", "resnet18", "--out", out,
                     "--iters", "3", "--stop-after", "1", *common)
    assert code == 0
    code, _, err = run(capsys, "train", "--out", out, "--resume", "--lr", "0.5", "--no-progress")
    assert code == 2
    assert_one_line_error(err, "trained with lr=None, not 0.5")
    code, out_text, _ = run(capsys, "train", "--out", out, "--resume", "--no-progress")
    assert code == 0 and "trained 3/3 iterations" in out_text


def test_config_values_are_type_checked(capsys, tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text("model: unet\ndataset: synthetic\nout: x\nbatch_size: '8'\n")
    code, _, err = run(capsys, "train", "--config", str(config))
    assert code == 2
    assert_one_line_error(err, "--batch-size must be a whole number")
    config.write_text("model: unet\ndataset: synthetic\nout: x\nepochs: 2\n")
    code, _, err = run(capsys, "train", "--config", str(config), "--iters", "0")
    assert_one_line_error(err, "--iters must be at least 1")  # the flag's budget replaced the file's


def test_batch_of_one_with_batch_norm_names_the_option(capsys, tmp_path):
    code, _, err = run(capsys, "train", "--model", "deeplab_v3", "--backbone", "resnet18", "--dataset", "synthetic",
                       "--synthetic-size", "64", "--synthetic-length", "2", "--crop-size", "64", "--batch-size", "1",
                       "--iters", "1", "--out", str(tmp_path / "o"), "--no-progress")
    assert code == 2
    assert_one_line_error(err, "--batch-size 1")


def test_worker_errors_stay_one_line(capsys, tmp_path):
    root = _folder_dataset(tmp_path / "bad", label=9)
    code, _, err = run(capsys, "train", "--model", "unet", "--model-opt", "base_channels=4", "--dataset", "folder",
                       "--data-root", str(root), "--out", str(tmp_path / "o"), "--iters", "1", "--crop-size", "16",
                       "--batch-size", "2", "--workers", "1", "--no-progress")
    assert code == 2
    assert_one_line_error(err, "x.png", "label values [9]")


def test_folder_void_value_becomes_255(tmp_path):
    from atrous.data import FolderDataset

    root = _folder_dataset(tmp_path / "void", label=1)
    (root / "classes.json").write_text(json.dumps({"classes": ["a", "b"], "ignore_index": 1}))
    _, mask = FolderDataset(str(root))[0]
    assert mask[0, 0] == 255 and mask.max() == 255 and set(mask.unique().tolist()) == {0, 255}


def test_eval_and_predict_take_views(capsys, tmp_path, tiny_checkpoint):
    metrics_file = tmp_path / "m.json"
    code, out, _ = run(capsys, "eval", "--checkpoint", str(tiny_checkpoint), "--dataset", "synthetic",
                       "--synthetic-size", "48", "--max-images", "2", "--scales", "0.75", "1", "--flip",
                       "--slide", "32", "40", "--stride", "16", "--precision", "fp32", "--json", str(metrics_file),
                       "--no-progress")
    assert code == 0 and "mIoU" in out
    assert json.loads(metrics_file.read_text())["inference"] == {
        "precision": "fp32", "scales": [0.75, 1.0], "flip": True, "window": [32, 40], "stride": [16, 16],
        "output_stride": None}  # as trained (the paper's default); --output-stride 8 records 8
    image = tmp_path / "scene.png"
    Image.fromarray(np.full((21, 35, 3), 90, np.uint8)).save(image)
    code, _, _ = run(capsys, "predict", "--checkpoint", str(tiny_checkpoint), str(image), "--out", str(tmp_path / "p"),
                     "--scales", "1", "1.5", "--flip", "--no-progress")
    assert code == 0 and (tmp_path / "p" / "scene.png").is_file()


@pytest.mark.parametrize(
    "options,fragment",
    [(["--scales", "0"], "--scales"), (["--slide", "0"], "--slide"), (["--slide", "8", "--stride", "9"], "--stride"),
     (["--stride", "4"], "--slide"), (["--slide", "8", "8", "8"], "--slide")],
)
def test_impossible_views_end_in_one_line(capsys, tmp_path, tiny_checkpoint, options, fragment):
    image = tmp_path / "scene.png"
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(image)
    for command in (["eval", "--dataset", "synthetic"], ["predict", str(image), "--out", str(tmp_path / "p")]):
        code, _, err = run(capsys, command[0], "--checkpoint", str(tiny_checkpoint), *command[1:], *options)
        assert code == 2
        assert_one_line_error(err, fragment)
    assert not (tmp_path / "p").exists()
