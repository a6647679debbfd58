"""The binary and multilabel tasks (issue 33, item 2): losses against segmentation_models_pytorch's
`mode=` losses, metrics against torchmetrics, sigmoid averaging over views by hand, masks read
and refused, the CRF on binary outputs, and train -> eval -> predict through the CLI per task."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from atrous.data import DataError, build_dataset
from atrous.data.masks import binary_values, check_mask
from atrous.data.transforms import ElasticDeform, RandomCrop, RandomHorizontalFlip, RandomScale
from atrous.errors import UserError
from atrous.losses import BatchTotals, build_loss, labelled_weight
from atrous.metrics import LabelMetrics
from tests.test_cli import assert_one_line_error, run

smp_losses = pytest.importorskip("segmentation_models_pytorch.losses", reason="smp (the test extra) not installed")
classification = pytest.importorskip("torchmetrics.classification", reason="torchmetrics (the test extra)")


def _batch(task: str, labels: int = 3, seed: int = 0):
    """Logits (2, K, 8, 8), the 0/1 target with a void corner, as atrous takes it (binary:
    (2, 8, 8)) and as (2, K, 8, 8) planes; every label present."""
    generator = torch.Generator().manual_seed(seed)
    k = 1 if task == "binary" else labels
    logits = torch.randn(2, k, 8, 8, generator=generator)
    planes = torch.randint(0, 2, (2, k, 8, 8), generator=generator)
    planes[0, :, 0, :3] = 255
    return logits, (planes[:, 0] if task == "binary" else planes), planes


def _ours(name: str, task: str, logits, target, **options) -> float:
    totals = BatchTotals(labelled_weight(target, None).item(), len(target))
    return build_loss(name, task=task, **options)(logits, target, totals).item()


@pytest.mark.parametrize("task", ["binary", "multilabel"])
def test_bce_with_pos_weight_and_smoothing_is_smps_over_the_labelled_pixels(task):
    logits, target, planes = _batch(task)
    labelled = (planes != 255).sum().item()  # smp's "mean" divides by void pixels too: its sum instead
    for options, smp_options in (({"pos_weight": 2.5}, {"pos_weight": torch.tensor(2.5)}),
                                 ({"smoothing": 0.1}, {"smooth_factor": 0.1})):
        reference = smp_losses.SoftBCEWithLogitsLoss(ignore_index=255, reduction="sum", **smp_options)
        expected = reference(logits, planes.float()).item() / labelled
        assert _ours("ce", task, logits, target, **options) == pytest.approx(expected, rel=1e-5)


@pytest.mark.parametrize("task", ["binary", "multilabel"])
def test_focal_is_smps(task):
    logits, target, planes = _batch(task)
    # smp's multilabel focal loss mis-indexes its void mask; per label, its binary one is the same sum
    per_label = [smp_losses.FocalLoss("binary", ignore_index=255, alpha=0.25, gamma=2.0)(logits[:, k], planes[:, k])
                 * (planes[:, k] != 255).sum() for k in range(planes.shape[1])]
    expected = (sum(per_label) / (planes != 255).sum()).item()
    assert _ours("focal", task, logits, target, alpha=0.25) == pytest.approx(expected, rel=1e-5)
    if task == "binary":
        smp_focal = smp_losses.FocalLoss("binary", ignore_index=255, gamma=3.0)(logits, target).item()
        assert _ours("focal", task, logits, target, gamma=3.0) == pytest.approx(smp_focal, rel=1e-5)


@pytest.mark.parametrize("task", ["binary", "multilabel"])
@pytest.mark.parametrize(("name", "reference"), [("dice", "DiceLoss"), ("jaccard", "JaccardLoss")])
def test_dice_and_jaccard_are_smps(task, name, reference):
    logits, target, _ = _batch(task)
    expected = getattr(smp_losses, reference)(task, ignore_index=255)(logits, target).item()
    assert _ours(name, task, logits, target) == pytest.approx(expected, rel=1e-5)


def test_dice_means_over_the_labels_present_where_smp_counts_absent_ones_as_zero():
    logits, target, _ = _batch("multilabel", labels=4)
    target[:, 2] = target[:, 2].clamp(max=0) * (target[:, 2] != 255) + 255 * (target[:, 2] == 255)  # label 2 absent
    smp_value = smp_losses.DiceLoss("multilabel", ignore_index=255)(logits, target).item()
    assert _ours("dice", "multilabel", logits, target) == pytest.approx(smp_value * 4 / 3, rel=1e-5)


def test_multiclass_jaccard_is_smps():
    generator = torch.Generator().manual_seed(1)
    logits, target = torch.randn(2, 4, 8, 8, generator=generator), torch.randint(0, 4, (2, 8, 8), generator=generator)
    target[0, 0, :3] = 255
    expected = smp_losses.JaccardLoss("multiclass", ignore_index=255)(logits, target).item()
    assert _ours("jaccard", "multiclass", logits, target) == pytest.approx(expected, rel=1e-5)


@pytest.mark.parametrize("per_image", [False, True])
def test_lovasz_hinge_is_smps(per_image):
    logits, target, planes = _batch("binary")
    expected = smp_losses.LovaszLoss("binary", ignore_index=255, per_image=per_image)(logits, target).item()
    assert _ours("lovasz", "binary", logits, target, per_image=per_image) == pytest.approx(expected, rel=1e-5)
    logits, target, planes = _batch("multilabel")  # atrous: the mean of each label's hinge
    per_label = [smp_losses.LovaszLoss("binary", ignore_index=255, per_image=per_image)(logits[:, k:k + 1],
                                                                                       planes[:, k])
                 for k in range(3)]
    assert _ours("lovasz", "multilabel", logits, target, per_image=per_image) == pytest.approx(
        (sum(per_label) / 3).item(), rel=1e-5)


def test_losses_without_the_sigmoid_tasks_refuse_them():
    with pytest.raises(ValueError, match="multiclass task"):
        build_loss("ohem", task="binary")
    with pytest.raises(ValueError, match="pos_weight"):
        build_loss("ce", pos_weight=2.0)


@pytest.mark.parametrize("task", ["binary", "multilabel"])
def test_label_metrics_are_torchmetrics(task):
    generator = torch.Generator().manual_seed(2)
    k = 1 if task == "binary" else 4
    probs = torch.rand(3, k, 16, 16, generator=generator)
    target = torch.randint(0, 2, (3, k, 16, 16), generator=generator)
    target[0, :, :4] = 255
    metrics = LabelMetrics(k)
    metrics.update((probs > 0.3).long(), target)
    result = metrics.compute()
    for name, key in (("JaccardIndex", "per_class_iou"), ("F1Score", "per_label_dice"),
                      ("Precision", "per_label_precision"), ("Recall", "per_label_recall")):
        if task == "binary":
            reference = getattr(classification, f"Binary{name}")(threshold=0.3, ignore_index=255)(probs, target)
        else:
            reference = getattr(classification, f"Multilabel{name}")(num_labels=k, threshold=0.3, average=None,
                                                                     ignore_index=255)(probs, target)
        assert result[key] == pytest.approx(reference.reshape(-1).tolist(), abs=1e-6), key
    assert result["mIoU"] == pytest.approx(float(np.mean(result["per_class_iou"])))


def test_infer_averages_sigmoid_probabilities_and_returns_their_logit():
    from atrous import create_model, infer

    torch.manual_seed(0)
    model = create_model("unet", 3, base_channels=4).eval()
    model.meta = {"task": "multilabel"}
    images = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        by_hand = (torch.sigmoid(model(images)) + torch.sigmoid(model(images.flip(-1))).flip(-1)) / 2
    scores = infer(model, images, flip=True, precision="fp32")
    assert torch.allclose(torch.sigmoid(scores), by_hand, atol=1e-6)
    softmax_mean = (torch.softmax(model(images), 1) + torch.softmax(model(images.flip(-1)), 1).flip(-1)) / 2
    assert not torch.allclose(torch.sigmoid(scores), softmax_mean.detach(), atol=1e-3)  # not the softmax's


def test_binary_mask_values_and_their_check():
    assert binary_values(np.array([0, 255, 0])).tolist() == [0, 1, 0]  # 0/255: 255 the foreground
    assert binary_values(np.array([0, 1, 255])).tolist() == [0, 1, 255]  # 0/1: 255 void
    assert binary_values(np.array([0, 255]), foreground=1).tolist() == [0, 255]  # classes.json says 0/1
    assert check_mask(np.array([[0, 1], [255, 1]]), "binary", 1, "m.png") is None
    problem = check_mask(binary_values(np.array([[0, 7], [1, 1]])), "binary", 1, "m.png")
    assert problem.startswith("binary mask m.png holds 7")
    assert "planes" in check_mask(np.zeros((2, 4, 4)), "multilabel", 3, "m.npy")
    assert check_mask(np.zeros((3, 4, 4)), "multilabel", 3, "m.npy") is None


def test_transforms_move_a_multilabel_masks_planes_together():
    masks = torch.from_numpy(np.random.default_rng(0).integers(0, 2, (3, 24, 20))).long()
    masks[1, :4] = 255
    image = torch.zeros(3, 24, 20, dtype=torch.uint8)
    for transform in (RandomScale(0.6, 1.7), RandomCrop(28), ElasticDeform(4.0), RandomHorizontalFlip(1.0)):
        _, moved = transform(image, masks, np.random.default_rng(5))
        for k in range(3):
            _, alone = transform(image, masks[k], np.random.default_rng(5))
            assert torch.equal(moved[k], alone), (type(transform).__name__, k)


def _images(root, stems, side=24):
    (root / "images").mkdir(parents=True)
    rng = np.random.default_rng(0)
    for stem in stems:
        Image.fromarray(rng.integers(0, 255, (side, side, 3), dtype=np.uint8)).save(root / "images" / f"{stem}.png")


def binary_folder(root, side=24, count=4):
    _images(root, [str(i) for i in range(count)], side)
    (root / "masks").mkdir()
    for i in range(count):
        mask = np.zeros((side, side), np.uint8)
        mask[4 + i : 14 + i, 6:18] = 255  # 0/255 as most tools save them
        Image.fromarray(mask).save(root / "masks" / f"{i}.png")
    return root


def multilabel_folder(root, side=24, count=4, labels=("building", "damaged")):
    _images(root, [str(i) for i in range(count)], side)
    for k, label in enumerate(labels):
        (root / "masks" / label).mkdir(parents=True)
        for i in range(count):
            mask = np.zeros((side, side), np.uint8)
            mask[2 + 3 * k : 14 + 3 * k, 3 + i : 15 + i] = 1
            Image.fromarray(mask).save(root / "masks" / label / f"{i}.png")
    return root


def test_folder_reads_binary_and_every_multilabel_layout(tmp_path):
    binary = build_dataset("folder", "train", data_root=str(binary_folder(tmp_path / "b")), task="binary")
    image, mask = binary[1]
    assert binary.info.class_names == ("foreground",) and mask.shape == (24, 24)
    assert mask.unique().tolist() == [0, 1] and int(mask.sum()) == 10 * 12
    folders = build_dataset("folder", "train", data_root=str(multilabel_folder(tmp_path / "m")), task="multilabel")
    assert folders.info.class_names == ("building", "damaged") and folders.info.task == "multilabel"
    _, planes = folders[0]
    assert planes.shape == (2, 24, 24) and planes.dtype == torch.int64
    npy = tmp_path / "n"
    _images(npy, ["a"])
    (npy / "masks").mkdir()
    np.save(npy / "masks" / "a.npy", planes.numpy().astype(np.uint8))
    (npy / "classes.json").write_text(json.dumps({"classes": ["building", "damaged"]}))
    assert torch.equal(build_dataset("folder", "train", data_root=str(npy), task="multilabel")[0][1], planes)
    tifffile = pytest.importorskip("tifffile")
    (npy / "masks" / "a.npy").unlink()
    tifffile.imwrite(npy / "masks" / "a.tif", planes.numpy().astype(np.uint8))
    assert torch.equal(build_dataset("folder", "train", data_root=str(npy), task="multilabel")[0][1], planes)


def test_bad_binary_and_multilabel_folders_end_in_one_line(tmp_path):
    root = binary_folder(tmp_path / "b")
    mask = np.zeros((24, 24), np.uint8)
    mask[3, 3] = 7
    Image.fromarray(mask).save(root / "masks" / "2.png")
    with pytest.raises(DataError) as error:
        build_dataset("folder", "train", data_root=str(root), task="binary")[2]
    assert str(error.value).startswith(f"binary mask {root / 'masks' / '2.png'} holds 7")
    assert "\n" not in str(error.value)
    root = multilabel_folder(tmp_path / "m")
    (root / "masks" / "damaged" / "3.png").unlink()
    with pytest.raises(DataError, match=r"image .*3\.png has no mask for label 'damaged' \(expected .*damaged/3\.png"):
        build_dataset("folder", "train", data_root=str(root), task="multilabel")
    three = tmp_path / "three"
    _images(three, ["a"])
    (three / "masks").mkdir()
    Image.fromarray(np.zeros((24, 24), np.uint8)).save(three / "masks" / "a.png")
    (three / "classes.json").write_text(json.dumps({"classes": ["x", "y", "z"]}))
    with pytest.raises(DataError, match="3 classes; task binary needs two"):
        build_dataset("folder", "train", data_root=str(three), task="binary")


def test_binary_crf_refines_two_classes_and_multilabel_is_refused():
    from atrous import create_model
    from atrous.crf import DenseCRF
    from atrous.inference.refinement import build_crf

    model = create_model("unet", 1, base_channels=4)
    model.meta = {"task": "binary"}
    crf = build_crf("dense", model)
    logits = torch.randn(1, 1, 16, 16, generator=torch.Generator().manual_seed(3))
    image = torch.rand(1, 3, 16, 16, generator=torch.Generator().manual_seed(4)) * 255
    with torch.no_grad():
        refined = crf(logits, image)
        two = DenseCRF(num_classes=2)(torch.cat([torch.zeros_like(logits), logits], 1), image)
    assert refined.shape == (1, 1, 16, 16)
    assert torch.allclose(torch.sigmoid(refined), torch.softmax(two, 1)[:, 1:], atol=1e-5)
    model.meta = {"task": "multilabel"}
    with pytest.raises(UserError, match="multilabel model's labels are independent"):
        build_crf("conv", model)


@pytest.mark.parametrize(("argv", "fragment"), [
    (["--task", "binary", "--class-weights", "median_frequency"], "--class-weights weighs classes"),
    (["--task", "multilabel", "--loss", "ohem"], "--loss ohem is for the multiclass task"),
    (["--task", "binary", "--adversarial"], "--adversarial is for the multiclass task"),
    (["--task", "binary", "--threshold", "1.5"], "--threshold"),
])
def test_impossible_task_options_end_in_one_line(capsys, tmp_path, argv, fragment):
    code, _, err = run(capsys, "train", "--model", "unet", "--dataset", "synthetic", "--out", str(tmp_path / "r"),
                       "--iters", "1", *argv)
    assert code != 0
    assert_one_line_error(err, fragment)


def _train_eval_predict(capsys, tmp_path, make, task, extra=()):
    root = tmp_path / "data"
    for split in ("train", "val"):
        make(root / split)
    out = tmp_path / "run"
    code, text, err = run(capsys, "train", "--model", "unet", "--model-opt", "base_channels=4", "--dataset", "folder",
                          "--data-root", str(root), "--task", task, "--iters", "2", "--batch-size", "2",
                          "--crop-size", "24", "--out", str(out), "--no-progress",
                          "--save-best", "--threshold", "0.4", *extra)
    assert code == 0, err
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["best"]["metric"] == "mIoU" and "per_label_dice" in metrics["val"]
    code, text, err = run(capsys, "eval", "--checkpoint", str(out / "model.safetensors"), "--dataset", "folder",
                          "--data-root", str(root), "--json", str(tmp_path / "e.json"),
                          "--no-progress", "--flip")
    assert code == 0, err
    assert "Dice" in text and "(threshold 0.4)" in text
    scores = json.loads((tmp_path / "e.json").read_text())
    assert scores["task"] == task and scores["threshold"] == 0.4
    code, text, err = run(capsys, "predict", "--checkpoint", str(out / "model.safetensors"),
                          str(root / "val" / "images" / "0.png"), "--out", str(tmp_path / "p"), "--save", "probs",
                          "--no-progress")
    assert code == 0, err
    return scores, tmp_path / "p"


def test_binary_train_eval_predict_through_the_cli(capsys, tmp_path):
    scores, predictions = _train_eval_predict(capsys, tmp_path, binary_folder, "binary",
                                              ("--loss", "dice"))
    assert scores["class_names"] == ["foreground"] and len(scores["per_label_recall"]) == 1
    mask = np.array(Image.open(predictions / "0.png"))
    probs = np.load(predictions / "0_probs.npy")
    assert probs.shape == (1, 24, 24) and set(np.unique(mask)) <= {0, 255}
    assert np.array_equal(mask == 255, probs[0] > 0.4)


def test_multilabel_train_eval_predict_through_the_cli(capsys, tmp_path):
    scores, predictions = _train_eval_predict(capsys, tmp_path, multilabel_folder, "multilabel",
                                              ("--loss", "ce", "--loss-opt", "pos_weight=2"))
    assert scores["class_names"] == ["building", "damaged"]
    probs = np.load(predictions / "0_probs.npy")
    assert probs.shape == (2, 24, 24) and probs.min() >= 0 and probs.max() <= 1
    for k, label in enumerate(("building", "damaged")):
        mask = np.array(Image.open(predictions / f"0_{label}.png"))
        assert np.array_equal(mask == 255, probs[k] > 0.4)
    code, _, err = run(capsys, "predict", "--checkpoint", str(tmp_path / "run" / "model.safetensors"),
                       str(tmp_path / "data" / "val" / "images" / "0.png"), "--out", str(tmp_path / "q"), "--crf", "dense")
    assert code != 0
    assert_one_line_error(err, "--crf dense", "multilabel")


def test_an_exported_onnx_model_keeps_the_task_and_infers_with_sigmoids(tmp_path):
    pytest.importorskip("onnxruntime", reason="onnxruntime (the test extra)")
    from atrous import create_model, infer, load_checkpoint, save_checkpoint
    from atrous.checkpoints.exported import read_export_metadata
    from atrous.deployment.export import export_onnx

    torch.manual_seed(0)
    model = create_model("unet", 2, base_channels=4).eval()
    save_checkpoint(model, str(tmp_path / "m.safetensors"), task="multilabel", threshold=0.3,
                    class_names=["a", "b"])
    model = load_checkpoint(str(tmp_path / "m.safetensors"))
    export_onnx(model, str(tmp_path / "m.onnx"), example_size=(32, 32))
    assert read_export_metadata(str(tmp_path / "m.onnx"))["meta"]["task"] == "multilabel"
    exported = load_checkpoint(str(tmp_path / "m.onnx"))
    assert exported.meta["task"] == "multilabel" and exported.meta["threshold"] == 0.3
    images = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        by_hand = (torch.sigmoid(model(images)) + torch.sigmoid(model(images.flip(-1))).flip(-1)) / 2
    assert torch.allclose(torch.sigmoid(infer(exported, images, flip=True)), by_hand, atol=1e-4)


def test_synthetic_labels_are_unions_of_the_scene_classes():
    from atrous.data.synthetic import SYNTHETIC_INFO, SYNTHETIC_LABELS

    scenes = build_dataset("synthetic", "val", synthetic_size=48, synthetic_length=2)
    labels = build_dataset("synthetic", "val", synthetic_size=48, synthetic_length=2, task="multilabel")
    vehicles = build_dataset("synthetic", "val", synthetic_size=48, synthetic_length=2, task="binary")
    image, classes = scenes[1]
    assert torch.equal(labels[1][0], image) and labels.info.class_names == tuple(SYNTHETIC_LABELS)
    for k, members in enumerate(SYNTHETIC_LABELS.values()):
        assert torch.equal(labels[1][1][k], torch.isin(classes, torch.tensor(members)).long())
    car, boat = SYNTHETIC_INFO.class_names.index("car"), SYNTHETIC_INFO.class_names.index("boat")
    assert torch.equal(vehicles[1][1], ((classes == car) | (classes == boat)).long())


@pytest.mark.parametrize("task", ["binary", "multilabel"])
def test_served_masks_are_the_thresholded_probabilities(task):
    import io

    from atrous import create_model, infer
    from atrous.serve.segment import Options, Segmenter, Timer

    torch.manual_seed(0)
    k = 1 if task == "binary" else 3
    model = create_model("unet", k, base_channels=4).eval()
    model.meta = {"task": task, "threshold": 0.5, "class_names": [f"l{i}" for i in range(k)]}
    pixels = np.random.default_rng(0).integers(0, 255, (20, 28, 3), dtype=np.uint8)
    upload = io.BytesIO()
    Image.fromarray(pixels).save(upload, format="PNG")
    served = Segmenter(model, {}, name="m").run(upload.getvalue(), "x", Options(output="mask"), Timer())
    mask = np.array(Image.open(io.BytesIO(served.body)))
    from atrous.checkpoints.meta import normalisation
    from atrous.data import eval_transform

    image, _ = eval_transform(*normalisation(model.meta))(torch.from_numpy(pixels).permute(2, 0, 1), None, None)
    on = (torch.sigmoid(infer(model, image[None], precision="fp32"))[0] > 0.5).numpy()
    expected = on[0] * 255 if task == "binary" else sum(on[i].astype(np.uint8) << i for i in range(k))
    assert np.array_equal(mask, expected)
