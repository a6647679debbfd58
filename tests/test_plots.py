"""Pictures: `atrous plot` (training curves from log.jsonl, one run or several overlaid) and
`atrous eval --plots` (confusion matrix, per-class IoU, the worst images), each read back from
what was written: the files, the matplotlib figures, the numbers behind them by hand."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import atrous
from atrous.data import build_dataset
from atrous.metrics import ConfusionMatrix
from tests.conftest import varied_segnet
from tests.test_cli import assert_one_line_error, run

pytest.importorskip("matplotlib", reason="matplotlib (the plots extra) is not installed: pictures are not drawn")

from atrous.inference.curves import plot_curves, quantities, read_run, read_runs  # noqa: E402
from atrous.inference.plots import (  # noqa: E402
    WorstImages,
    colour_labels,
    confusion_figure,
    error_map,
    normalised_confusion,
    per_image_scores,
)

EPOCH = {"epoch": 1, "step": 10, "loss": 2.0, "lr": 0.01, "elapsed_s": 1.0}


def write_run(folder: Path, steps: int = 4, scale: float = 1.0, extra: dict | None = None, torn: bool = False) -> Path:
    """A run folder whose log.jsonl looks like the trainer's: epoch lines, val lines, an end line."""
    folder.mkdir(parents=True)
    lines = []
    for i in range(1, steps + 1):
        lines.append({"epoch": i, "step": 10 * i, "loss": scale * 2.0 / i, "lr": 0.01 * (1 - i / (steps + 1)),
                      "elapsed_s": 1.5 * i})
        if i % 2 == 0:
            lines.append({"step": 10 * i, "val_mIoU": 0.1 * i, "val_pixel_accuracy": 0.2 * i, "elapsed_s": 1.5 * i,
                          **(extra or {})})
    lines.append({"event": "finished", "step": 10 * steps, "elapsed_s": 1.5 * steps})
    text = "".join(json.dumps(line) + "\n" for line in lines)
    (folder / "log.jsonl").write_text(text + ('{"epoch": 9, "step": 90, "lo' if torn else ""))
    return folder


# --- atrous plot ---------------------------------------------------------------------------

def test_one_run_gives_a_png_with_a_subplot_per_quantity(tmp_path, capsys):
    run_folder = write_run(tmp_path / "base")
    out = tmp_path / "pictures" / "curves.png"
    code, printed, err = run(capsys, "plot", str(run_folder), "--out", str(out))
    assert code == 0, err
    assert "4 curves of 1 run" in printed
    image = np.asarray(Image.open(out).convert("RGB"))
    assert image.shape[0] > 400 and image.shape[1] > 600
    assert image.std() > 10  # not blank
    blue = np.all(np.abs(image.astype(int) - (31, 119, 180)) < 8, axis=2)  # matplotlib's C0, the run's colour
    assert blue.sum() > 200


def test_two_runs_overlaid_give_two_lines_per_subplot(tmp_path):
    runs = [str(write_run(tmp_path / "lr_high")), str(write_run(tmp_path / "lr_low", scale=0.5))]
    figure = plot_curves(runs)
    titles = [axes.get_title() for axes in figure.axes]
    assert titles == ["training loss (loss)", "learning rate (lr)", "val_mIoU", "val_pixel_accuracy"]
    for axes in figure.axes:
        lines = axes.get_lines()
        assert len(lines) == 2
        assert [line.get_label() for line in lines] == ["lr_high", "lr_low"]
    loss = figure.axes[0].get_lines()[1]
    assert list(loss.get_xdata()) == [10, 20, 30, 40]
    assert list(loss.get_ydata()) == pytest.approx([1.0, 0.5, 1 / 3, 0.25])
    assert list(figure.axes[2].get_lines()[0].get_xdata()) == [20, 40]


def test_svg_holds_each_run_label_and_each_title(tmp_path):
    extra = {"val_iou:Road": 0.5}
    runs = [str(write_run(tmp_path / "alpha", extra=extra)), str(write_run(tmp_path / "beta"))]
    out = tmp_path / "curves.svg"
    plot_curves(runs, str(out))
    text = out.read_text()
    assert text.startswith("<?xml") and "<svg" in text
    for words in ("alpha", "beta", "training loss (loss)", "learning rate (lr)", "val_mIoU", "val_pixel_accuracy",
                  "val_iou:Road", "iteration"):
        assert words in text, words


def test_a_torn_last_line_is_skipped(tmp_path):
    run_log = read_run(str(write_run(tmp_path / "killed", torn=True)))
    assert run_log.skipped_lines == 1
    assert run_log.series["loss"][0] == [10, 20, 30, 40]  # the torn epoch 9 is not there


def test_one_point_shows_as_a_marker(tmp_path):
    folder = tmp_path / "short"
    folder.mkdir()
    (folder / "log.jsonl").write_text(json.dumps(EPOCH) + "\n")
    figure = plot_curves([str(folder)], str(tmp_path / "one.png"))
    assert [axes.get_title() for axes in figure.axes] == ["training loss (loss)", "learning rate (lr)"]
    line = figure.axes[0].get_lines()[0]
    assert list(line.get_xdata()) == [10] and line.get_marker() == "o"


def test_new_numeric_keys_are_drawn_grouped_by_split(tmp_path):
    folder = tmp_path / "future"
    folder.mkdir()
    records = [{**EPOCH, "aux_loss": 0.3, "note": "text", "flag": True},
               {"step": 10, "val_mIoU": 0.4, "val_iou:Road": 0.7, "elapsed_s": 1},
               {"step": 10, "test_mIoU": 0.3, "elapsed_s": 1},
               {"step": 20, "val_mIoU": 0.5, "val_pixel_accuracy": 0.8, "elapsed_s": 2},
               ["not", "a", "record"]]
    (folder / "log.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records) + "\n")
    [run_log] = read_runs([str(folder)])
    assert list(run_log.series) == ["loss", "lr", "aux_loss", "val_mIoU", "val_iou:Road", "val_pixel_accuracy",
                                    "test_mIoU"]
    assert run_log.series["val_mIoU"] == ([10, 20], [0.4, 0.5])
    assert quantities([run_log], ["val_*", "loss"]) == ["val_mIoU", "val_iou:Road", "val_pixel_accuracy", "loss"]


def test_runs_with_the_same_folder_name_are_told_apart(tmp_path):
    runs = [str(write_run(tmp_path / "a" / "run")), str(write_run(tmp_path / "b" / "run"))]
    labels = [r.label for r in read_runs(runs)]
    assert labels[0] != labels[1] and labels[0].endswith("a/run")


def test_metrics_chooses_the_subplots(tmp_path, capsys):
    folder = str(write_run(tmp_path / "base"))
    code, printed, _ = run(capsys, "plot", folder, "--metrics", "val_mIoU", "lr", "--out", str(tmp_path / "c.png"))
    assert code == 0 and "2 curves" in printed
    code, _, err = run(capsys, "plot", folder, "--metrics", "val_dice", "--out", str(tmp_path / "c.png"))
    assert code == 2
    assert_one_line_error(err, "--metrics", "val_dice", "loss, lr, val_mIoU, val_pixel_accuracy")


@pytest.mark.parametrize("case, fragments", [
    ("missing", ["no such run folder"]),
    ("no_log", ["holds no log.jsonl"]),
    ("empty_log", ["holds no training records yet"]),
    ("bad_suffix", ["--out", "curves.jpg", ".png, .svg"]),
])
def test_bad_inputs_are_one_line_errors(tmp_path, capsys, case, fragments):
    folder = tmp_path / "run"
    out = tmp_path / "curves.png"
    if case in ("no_log", "empty_log", "bad_suffix"):
        folder.mkdir()
    if case == "empty_log":
        (folder / "log.jsonl").write_text('{"event": "stopped", "step": 0}\n')
    if case == "bad_suffix":
        write_run(tmp_path / "fine")
        folder, out = tmp_path / "fine", tmp_path / "curves.jpg"
    code, _, err = run(capsys, "plot", str(folder), "--out", str(out))
    assert code == 2
    assert_one_line_error(err, *fragments, *([str(folder)] if case in ("missing", "no_log") else []))
    assert not out.exists()


def test_without_matplotlib_plot_says_how_to_install_it(tmp_path, capsys, monkeypatch):
    folder = str(write_run(tmp_path / "base"))
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # `import matplotlib` raises ImportError
    code, _, err = run(capsys, "plot", folder, "--out", str(tmp_path / "c.png"))
    assert code == 2
    assert_one_line_error(err, "atrous plot needs matplotlib: pip install 'atrous[plots]'")


# --- atrous eval --plots -------------------------------------------------------------------

SYNTHETIC = ["--dataset", "synthetic", "--synthetic-size", "32"]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    """A small random SegNet-Basic for the synthetic scenes' 7 classes (no training)."""
    info = build_dataset("synthetic", "val", synthetic_size=32).info
    model = varied_segnet(info.num_classes)
    path = tmp_path_factory.mktemp("plots") / "random.safetensors"
    atrous.save_checkpoint(model.eval(), str(path), class_names=list(info.class_names),
                           palette=[list(c) for c in info.palette], mean=[0.45] * 3, std=[0.22] * 3)
    return path


def test_eval_plots_writes_three_pictures(tmp_path, capsys, checkpoint):
    folder, metrics_file = tmp_path / "pics", tmp_path / "m.json"
    code, printed, err = run(capsys, "eval", "--checkpoint", str(checkpoint), *SYNTHETIC, "--max-images", "6",
                             "--plots", str(folder), "--plots-worst", "3", "--json", str(metrics_file),
                             "--no-progress", "--precision", "fp32")
    assert code == 0, err
    assert sorted(p.name for p in folder.iterdir()) == ["confusion.png", "errors.png", "iou.png"]
    assert "pictures:" in printed
    assert "confusion_matrix" not in json.loads(metrics_file.read_text())  # --json is as without --plots
    for name in ("confusion.png", "iou.png", "errors.png"):
        image = np.asarray(Image.open(folder / name).convert("RGB"))
        assert image.std() > 10, name
    errors = Image.open(folder / "errors.png")
    assert errors.height > errors.width * 0.6  # three rows of four square panels, a legend below
    code, _, _ = run(capsys, "eval", "--checkpoint", str(checkpoint), *SYNTHETIC, "--max-images", "2",
                     "--plots", str(tmp_path / "none"), "--plots-worst", "0", "--no-progress")
    assert code == 0 and sorted(p.name for p in (tmp_path / "none").iterdir()) == ["confusion.png", "iou.png"]


def test_eval_plots_refuses_a_folder_under_a_file_before_work(tmp_path, capsys, checkpoint):
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    code, _, err = run(capsys, "eval", "--checkpoint", str(checkpoint), *SYNTHETIC, "--plots", str(blocker / "p"))
    assert code == 2
    assert_one_line_error(err, "--plots", str(blocker / "p"))


def test_eval_plots_without_matplotlib_is_refused_before_work(tmp_path, capsys, monkeypatch, checkpoint):
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    code, _, err = run(capsys, "eval", "--checkpoint", str(checkpoint), *SYNTHETIC, "--plots", str(tmp_path / "p"))
    assert code == 2
    assert_one_line_error(err, "atrous eval --plots needs matplotlib: pip install 'atrous[plots]'")


def test_confusion_rows_are_normalised_as_the_metrics_say(checkpoint):
    """The matrix evaluate keeps for the pictures, counted again by hand from the labels; its
    normalised rows sum to 1 where the class occurs, and their diagonal is the per-class accuracy."""
    model = atrous.load_checkpoint(str(checkpoint))
    dataset = build_dataset("synthetic", "val", synthetic_size=32)
    subset = torch.utils.data.Subset(dataset, range(5))
    subset.info = dataset.info
    seen: list[int] = []
    metrics = atrous.evaluate(model, subset, batch_size=2, precision="fp32", progress=False, confusion_matrix=True,
                              on_batch=lambda indices, raws, masks, pred: seen.extend(indices))
    assert seen == [0, 1, 2, 3, 4]
    counts = np.asarray(metrics["confusion_matrix"])
    truth_pixels = np.bincount(torch.stack([dataset[i][1] for i in range(5)]).flatten().numpy(), minlength=7)
    assert (counts.sum(axis=1) == truth_pixels[:7]).all()
    normalised = normalised_confusion(counts)
    present = truth_pixels[:7] > 0
    assert np.allclose(normalised[present].sum(axis=1), 1.0)
    assert np.isnan(normalised[~present]).all()
    accuracy = [np.nan if a is None else a for a in metrics["per_class_accuracy"]]
    assert np.allclose(np.diag(normalised), accuracy, equal_nan=True)
    figure = confusion_figure(counts, metrics["class_names"])
    drawn = figure.axes[0].images[0].get_array()
    assert np.allclose(drawn.filled(np.nan), normalised, equal_nan=True)
    assert [t.get_text() for t in figure.axes[0].get_yticklabels()] == list(dataset.info.class_names)
    plain = atrous.evaluate(model, subset, batch_size=2, precision="fp32", progress=False)
    assert "confusion_matrix" not in plain and plain["mIoU"] == metrics["mIoU"]


def test_per_image_scores_match_one_confusion_matrix_per_image():
    torch.manual_seed(1)
    k = 5
    pred = torch.randint(0, k, (4, 9, 7))
    target = torch.randint(0, k, (4, 9, 7))
    target[1, :3] = 255
    target[2] = 255  # nothing labelled: NaN
    pred[3] = target[3].clamp(max=k - 1)  # right everywhere
    miou, accuracy = per_image_scores(pred, target, k)
    for i in (0, 1, 3):
        one = ConfusionMatrix(k)
        one.update(pred[i], target[i])
        expected = one.compute()
        assert miou[i].item() == pytest.approx(expected["mIoU"])
        assert accuracy[i].item() == pytest.approx(expected["pixel_accuracy"])
    assert torch.isnan(miou[2]) and torch.isnan(accuracy[2])
    assert miou[3].item() == 1.0


def test_worst_images_keeps_the_lowest_scores_worst_first():
    torch.manual_seed(2)
    k, worst = 3, WorstImages(2, 3, by="pixel_accuracy")
    scores = {}
    for start in (0, 3, 6):
        target = torch.randint(0, k, (3, 8, 8))
        pred = torch.where(torch.rand(3, 8, 8) < torch.tensor([0.2, 0.5, 0.9])[:, None, None], target, (target + 1) % k)
        worst([start, start + 1, start + 2], torch.zeros(3, 3, 8, 8, dtype=torch.uint8), target, pred)
        for row, value in enumerate(per_image_scores(pred, target, k)[1].tolist()):
            scores[start + row] = value
    expected = sorted(scores, key=lambda i: (scores[i], i))[:2]
    rows = worst.rows()
    assert [r.index for r in rows] == expected
    assert rows[0].pixel_accuracy <= rows[1].pixel_accuracy
    assert rows[0].image.shape == (8, 8, 3) and rows[0].truth.shape == (8, 8)


def test_void_shows_as_grey_checks_in_the_ground_truth():
    palette = np.zeros((256, 3), np.uint8)
    palette[1] = (10, 20, 30)
    labels = np.ones((8, 8), np.int64)
    labels[:, 4:] = 255
    colours = colour_labels(labels, palette)
    assert (colours[:, :4] == (10, 20, 30)).all()
    assert tuple(colours[0, 4]) == (110, 110, 110) and tuple(colours[4, 4]) == (190, 190, 190)  # 4-pixel squares


def test_error_map_marks_wrong_red_and_void_black():
    image = np.full((2, 3, 3), 200, np.uint8)
    truth = np.array([[0, 1, 255], [2, 2, 1]])
    pred = np.array([[0, 0, 1], [2, 1, 1]])
    colours = error_map(image, truth, pred)
    assert tuple(colours[0, 1]) == (230, 30, 30) and tuple(colours[1, 1]) == (230, 30, 30)
    assert tuple(colours[0, 2]) == (0, 0, 0)
    assert colours[0, 0, 0] == colours[0, 0, 1] == colours[0, 0, 2] > 0  # right: the image, grey


def test_any_image_is_shown_as_8_bit_rgb():
    from atrous.inference.plots import display_rgb

    photo = torch.randint(0, 256, (3, 4, 5), dtype=torch.uint8)
    assert (display_rgb(photo) == photo.permute(1, 2, 0).numpy()).all()
    bands = torch.linspace(0, 4000, 6 * 4 * 5).reshape(6, 4, 5)  # 16-bit-like, six bands: the first three
    shown = display_rgb(bands)
    assert shown.shape == (4, 5, 3) and shown.dtype == np.uint8 and shown.min() == 0 and shown.max() == 255
    grey = display_rgb(torch.rand(1, 4, 5))
    assert shown.shape == grey.shape and (grey[..., 0] == grey[..., 2]).all()
