"""`atrous.evaluate` and `atrous eval` against metrics computed independently: the model run by
hand on each image (normalised by hand, the views averaged by hand), torchmetrics' confusion
matrix of those predictions, and pydensecrf applied by hand to the model's logits for
`--crf dense`. A folder dataset of images of different sizes, with void pixels in the masks."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

import atrous
from atrous.cli import main
from atrous.crf import DenseCRF
from atrous.data import FolderDataset
from atrous.inference.evaluate import Views

tm = pytest.importorskip("torchmetrics.classification", reason="torchmetrics (the test extra) is not installed: "
                         "evaluate() is not compared with an independent confusion matrix")
SIZES = [(40, 56), (33, 47), (40, 56)]  # a batch of two equal sizes, then another size
K = 5


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """Scenes of coloured blocks with noise; masks of the blocks' classes, a void band."""
    root = tmp_path_factory.mktemp("eval_folder")
    (root / "images").mkdir(), (root / "masks").mkdir()
    rng = np.random.default_rng(0)
    colours = rng.integers(0, 256, size=(K, 3))
    for i, (h, w) in enumerate(SIZES):
        labels = np.zeros((h, w), dtype=np.uint8)
        for k in range(1, K):
            top, left = rng.integers(0, h - 10), rng.integers(0, w - 12)
            labels[top : top + rng.integers(6, 20), left : left + rng.integers(8, 25)] = k
        image = colours[labels] + rng.normal(0, 12, size=(h, w, 3))
        mask = labels.copy()
        mask[:, :3] = 255  # void
        Image.fromarray(image.clip(0, 255).astype(np.uint8)).save(root / "images" / f"{i}.png")
        Image.fromarray(mask).save(root / "masks" / f"{i}.png")
    return root


def normalised(image: torch.Tensor, meta: dict) -> torch.Tensor:
    """(3, H, W) uint8 -> (1, 3, H, W) float, (x / 255 - mean) / std."""
    mean, std = torch.tensor(meta["mean"])[:, None, None], torch.tensor(meta["std"])[:, None, None]
    return ((image.float() / 255 - mean) / std)[None]


def logits_by_hand(model, image: torch.Tensor, scales=(1.0,), flip=False) -> torch.Tensor:
    """(1, K, H, W): the logits of one view, or the log of the mean softmax over the views."""
    x = normalised(image, model.meta)
    size = x.shape[-2:]
    with torch.no_grad():
        if scales == (1.0,) and not flip:
            return model(x)
        probabilities = []
        for scale in scales:
            scaled_size = (int(size[0] * scale + 0.5), int(size[1] * scale + 0.5))
            scaled = F.interpolate(x, size=scaled_size, mode="bilinear", align_corners=False)
            for mirrored in (False, True) if flip else (False,):
                view = scaled.flip(-1) if mirrored else scaled
                p = model(view).softmax(1)
                p = p.flip(-1) if mirrored else p
                probabilities.append(F.interpolate(p, size=size, mode="bilinear", align_corners=False))
        return torch.stack(probabilities).mean(0).log()


def pydensecrf_by_hand(logits: torch.Tensor, image: torch.Tensor) -> np.ndarray:
    """pydensecrf with its documented kernels (DeepLab's): Gaussian sxy 3, compat 3; bilateral
    sxy 80, srgb 13, compat 10; 10 iterations, on the unary -log softmax."""
    dcrf = pytest.importorskip("pydensecrf.densecrf", reason="pydensecrf is not installed: eval --crf dense "
                               "is not compared with it")
    _, k, h, w = logits.shape
    crf = dcrf.DenseCRF2D(w, h, k)
    unary = -torch.log_softmax(logits[0].double(), 0).numpy().reshape(k, -1)
    crf.setUnaryEnergy(np.ascontiguousarray(unary, dtype=np.float32))
    crf.addPairwiseGaussian(sxy=3, compat=3)
    crf.addPairwiseBilateral(sxy=80, srgb=13, rgbim=np.ascontiguousarray(image.permute(1, 2, 0).numpy()), compat=10)
    return np.array(crf.inference(10)).reshape(k, h, w).argmax(0)


def torchmetrics_summary(predictions: list[np.ndarray], dataset) -> dict:
    matrix = tm.MulticlassConfusionMatrix(num_classes=K, ignore_index=255)
    for pred, (_, mask) in zip(predictions, dataset, strict=True):
        matrix.update(torch.as_tensor(pred)[None].long(), mask[None].long())
    m = matrix.compute().double()  # rows: truth, columns: prediction
    tp, truth, predicted = m.diag(), m.sum(1), m.sum(0)
    iou = tp / (truth + predicted - tp)
    return {"per_class_iou": iou, "mIoU": float(iou[~iou.isnan()].mean()),
            "pixel_accuracy": float(tp.sum() / m.sum()), "mean_accuracy": float((tp / truth).nanmean()),
            "pixels": int(m.sum())}


def assert_same_metrics(got: dict, expected: dict, atol: float = 1e-9) -> None:
    assert got["pixels"] == expected["pixels"]
    np.testing.assert_allclose(np.array(got["per_class_iou"], dtype=float), expected["per_class_iou"].numpy(),
                               atol=atol)
    for key in ("mIoU", "pixel_accuracy", "mean_accuracy"):
        assert got[key] == pytest.approx(expected[key], abs=atol), key


@pytest.mark.parametrize("scales,flip", [((1.0,), False), ((0.75, 1.0, 1.5), True)])
def test_evaluate_matches_torchmetrics_on_predictions_made_by_hand(folder, varied_checkpoint, scales, flip):
    model = atrous.load_checkpoint(str(varied_checkpoint)).eval()
    dataset = FolderDataset(str(folder), None, num_classes=K)
    predictions = [logits_by_hand(model, image, scales, flip)[0].argmax(0).numpy() for image, _ in dataset]
    expected = torchmetrics_summary(predictions, dataset)
    assert 0.05 < expected["mIoU"] < 0.95, "the test needs predictions that are neither all right nor all wrong"
    got = atrous.evaluate(model, dataset, batch_size=2, precision="fp32", views=Views(scales=scales, flip=flip),
                          progress=False)
    assert_same_metrics(got, expected)
    assert got["pixels"] == sum(h * (w - 3) for h, w in SIZES)  # void left out


def test_evaluate_with_the_dense_crf_matches_pydensecrf_by_hand(folder, varied_checkpoint):
    model = atrous.load_checkpoint(str(varied_checkpoint)).eval()
    dataset = FolderDataset(str(folder), None, num_classes=K)
    plain = [logits_by_hand(model, image) for image, _ in dataset]
    refined = [pydensecrf_by_hand(logits, image) for logits, (image, _) in zip(plain, dataset, strict=True)]
    changed = np.mean([(r != lg[0].argmax(0).numpy()).mean() for r, lg in zip(refined, plain, strict=True)])
    assert changed > 0.05, "the CRF should change the random model's labels"
    expected = torchmetrics_summary(refined, dataset)
    got = atrous.evaluate(model, dataset, batch_size=2, precision="fp32", crf=DenseCRF(num_classes=K),
                          progress=False)
    # two permutohedral lattices (pydensecrf's and atrous') differ in rounding (max |dQ| about
    # 1e-6, tests/test_crf.py), yet every label agrees on these scenes (measured), so the
    # metrics, per class too, are pydensecrf's exactly; 5 iterations instead of 10 fail here
    assert_same_metrics(got, expected)


def test_eval_cli_with_dense_crf_matches_pydensecrf_by_hand(folder, varied_checkpoint, tmp_path):
    model = atrous.load_checkpoint(str(varied_checkpoint)).eval()
    dataset = FolderDataset(str(folder), None, num_classes=K)
    refined = [pydensecrf_by_hand(logits_by_hand(model, image), image) for image, _ in dataset]
    expected = torchmetrics_summary(refined, dataset)
    out = tmp_path / "metrics.json"
    code = main(["eval", "--checkpoint", str(varied_checkpoint), "--dataset", "folder", "--data-root", str(folder),
                 "--split", "train", "--num-classes", str(K), "--crf", "dense", "--precision", "fp32", "--json",
                 str(out), "--no-progress"])
    assert code == 0
    got = json.loads(out.read_text())
    got = got.get("metrics", got)
    assert_same_metrics(got, expected, atol=1e-6)  # the JSON's floats may be rounded
