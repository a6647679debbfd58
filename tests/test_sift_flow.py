"""SIFT Flow (the release's Images/, SemanticLabels/ and GeoLabels/ .mat files, FCN's lists) on
tiny fixture trees, and FCN's two-headed net with its two losses."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import atrous
from atrous.data import DataError, build_dataset
from atrous.data.sift_flow import SUBFOLDER, SiftFlow
from atrous.losses import build_loss
from atrous.losses.multi_head import multi_head_loss

from .dataset_trees import write_jpeg, write_recipe_and_train

pytest.importorskip("scipy", reason="scipy (the datasets extra) reads the release's .mat files")

SEMANTIC = np.arange(34, dtype=np.int64).reshape(1, 34).repeat(6, axis=0)  # every value 0..33 (0 unlabelled)
GEOMETRIC = np.array([-1, 0, 1, 2, 3, 3] * 34).reshape(34, 6).T  # -1 and 0 unlabelled


def write_mat(path: Path, labels: np.ndarray) -> None:
    from scipy.io import savemat

    path.parent.mkdir(parents=True, exist_ok=True)
    savemat(str(path), {"S": labels.astype(np.float64), "names": np.array(["x"], dtype=object)})  # MATLAB doubles


def make_sift_flow(root: Path, splits: dict[str, list[str]], semantic: np.ndarray = SEMANTIC,
                   geometric: np.ndarray = GEOMETRIC) -> None:
    root.mkdir(parents=True, exist_ok=True)
    for split, ids in splits.items():
        (root / f"{split}.txt").write_text("".join(f"{i}\n" for i in ids))
        for n, image_id in enumerate(ids):
            write_jpeg(root / "Images" / SUBFOLDER / f"{image_id}.jpg", *semantic.shape, seed=n)
            write_mat(root / "SemanticLabels" / SUBFOLDER / f"{image_id}.mat", semantic)
            write_mat(root / "GeoLabels" / SUBFOLDER / f"{image_id}.mat", geometric)


def test_sift_flow_semantic_and_geometric_labels_value_by_value(tmp_path):
    make_sift_flow(tmp_path, {"trainval": ["coast_arnat59", "street_art1"], "test": ["tallbuilding_a1"]})
    ds = build_dataset("sift_flow", "train", data_root=str(tmp_path))
    assert isinstance(ds, SiftFlow) and len(ds) == 2 and ds.info.num_classes == 33
    assert (ds.info.class_names[0], ds.info.class_names[27], ds.info.class_names[32]) == ("awning", "sky", "window")
    image, mask = ds[0]
    assert image.shape == (3, 6, 34)
    # FCN's siftflow_layers.py: uint8(S) - 1, so 0 wraps to the void 255
    assert torch.equal(mask, torch.from_numpy((SEMANTIC.astype(np.uint8) - np.uint8(1)).astype(np.int64)))
    geo = build_dataset("sift_flow_geometric", "val", data_root=str(tmp_path))  # val = test.txt
    assert geo.info.class_names == ("sky", "horizontal", "vertical") and len(geo) == 1
    expected = np.where(GEOMETRIC == -1, 0, GEOMETRIC).astype(np.uint8) - np.uint8(1)  # -1 -> 0 -> 255
    assert torch.equal(geo[0][1], torch.from_numpy(expected.astype(np.int64)))
    both = SiftFlow(str(tmp_path), "test", labels="both")
    image, masks = both[0]
    assert masks.shape == (2, 6, 34) and torch.equal(masks[1], geo[0][1]) and torch.equal(masks[0], mask)
    assert [m.tolist() for m in ds.labels()] == [mask.tolist()] * 2


def test_sift_flow_errors_name_the_file(tmp_path):
    with pytest.raises(DataError, match="SIFT Flow folder not found"):
        SiftFlow(str(tmp_path / "nowhere"))
    make_sift_flow(tmp_path, {"trainval": ["a", "b"], "test": ["c"]})
    with pytest.raises(DataError, match="sift_flow has no 'extra' split"):
        SiftFlow(str(tmp_path), "extra")
    (tmp_path / "GeoLabels" / SUBFOLDER / "b.mat").unlink()
    SiftFlow(str(tmp_path), "train")  # the semantic labels alone need no geometric file
    with pytest.raises(DataError, match=r"SIFT Flow file not found: .*GeoLabels.*b\.mat"):
        SiftFlow(str(tmp_path), "train", labels="geometric")
    bad = SEMANTIC.copy()
    bad[0, 0] = 34
    write_mat(tmp_path / "SemanticLabels" / SUBFOLDER / "c.mat", bad)
    with pytest.raises(DataError, match=r"semantic label .*c\.mat has values \[34\] outside -1\.\.33"):
        SiftFlow(str(tmp_path), "test")[0]
    write_mat(tmp_path / "SemanticLabels" / SUBFOLDER / "c.mat", SEMANTIC + 0.5)
    with pytest.raises(DataError, match=r"c\.mat: 'S' holds values that are not whole numbers"):
        SiftFlow(str(tmp_path), "test")[0]
    write_mat(tmp_path / "SemanticLabels" / SUBFOLDER / "c.mat", SEMANTIC[:, :30])
    with pytest.raises(DataError, match=r"c\.mat is 30x6 but its image is 34x6"):
        SiftFlow(str(tmp_path), "test")[0]
    (tmp_path / "test.txt").unlink()
    with pytest.raises(DataError, match=r"split file not found: .*test\.txt"):
        SiftFlow(str(tmp_path), "test")


def test_two_headed_fcn8s_trains_both_heads_on_both_label_maps(tmp_path):
    """FCN's SIFT Flow net: one trunk, a semantic and a geometric head, the two losses summed;
    each loss is the mean cross-entropy over its own labelled pixels (F.cross_entropy's)."""
    make_sift_flow(tmp_path, {"trainval": ["a", "b"]})
    images, masks = zip(*SiftFlow(str(tmp_path), "train", labels="both"), strict=True)
    x, y = torch.stack(images).float() / 255, torch.stack(masks)  # (2, 3, 6, 34), (2, 2, 6, 34)
    torch.manual_seed(0)
    model = atrous.create_model("fcn8s", 33, backbone="resnet18", output_stride=32, extra_heads={"geometric": 3})
    outputs = model(x, return_aux=True)
    assert outputs["out"].shape == (2, 33, 6, 34) and outputs["geometric"].shape == (2, 3, 6, 34)
    total, parts = multi_head_loss(build_loss("ce"), outputs, y)
    semantic = F.cross_entropy(outputs["out"], y[:, 0], ignore_index=255)
    geometric = F.cross_entropy(outputs["geometric"], y[:, 1], ignore_index=255)
    assert torch.allclose(parts["out"], semantic) and torch.allclose(parts["geometric"], geometric)
    assert torch.allclose(total, semantic + geometric)
    total.backward()
    head = model.extra_heads["geometric"]
    assert head.score_fr[-1].weight.grad.abs().sum() > 0 and model.head[-1].weight.grad.abs().sum() > 0
    with pytest.raises(ValueError, match=r"masks must be \(N, 2, H, W\)"):
        multi_head_loss(build_loss("ce"), outputs, y[:, 0])
    with pytest.raises(ValueError, match="needs a name other than out"):
        atrous.create_model("fcn8s", 33, backbone="resnet18", extra_heads={"out": 3})


def test_sift_flow_recipe_starts_on_a_fixture_tree(tmp_path):
    make_sift_flow(tmp_path / "data", {"trainval": ["a", "b"], "test": ["c"]})
    write_recipe_and_train("sift_flow/fcn8s_vgg16", tmp_path / "data", tmp_path)


def test_atrous_train_scores_each_head_against_its_own_label_plane(tmp_path):
    """`atrous train` on sift_flow_both with the two-headed fcn8s: the step's losses are the
    semantic head's cross-entropy on plane 0 and the geometric head's on plane 1 (each over its
    own labelled pixels, as F.cross_entropy averages), summed; a dataset of one plane is refused."""
    from atrous.errors import UserError
    from atrous.training.trainer import TrainConfig, Trainer

    make_sift_flow(tmp_path / "data", {"trainval": ["a", "b"]})
    values = dict(model="fcn8s", backbone="resnet18", dataset="sift_flow_both", data_root=str(tmp_path / "data"),
                  model_options={"extra_heads": {"geometric": 3}, "dropout": 0.0}, out=str(tmp_path / "run"),
                  iters=1, batch_size=2, crop_size=None, scale_min=1.0, scale_max=1.0, flip=False, eval_split=None,
                  progress=False)
    trainer = Trainer(TrainConfig(**values))
    micro_batches = next(trainer.steps())
    images, masks = micro_batches[0]
    assert masks.shape == (2, 2, 6, 34)
    trainer.model.train()
    with torch.no_grad():
        outputs = trainer.model(images, return_aux=True)
    semantic = F.cross_entropy(outputs["out"], masks[:, 0], ignore_index=255).item()
    geometric = F.cross_entropy(outputs["geometric"], masks[:, 1], ignore_index=255).item()
    losses = trainer._train_step(micro_batches, lr=0.0)
    assert losses["out"] == pytest.approx(semantic, rel=1e-5)
    assert losses["geometric"] == pytest.approx(geometric, rel=1e-5)
    assert losses["loss"] == pytest.approx(semantic + geometric, rel=1e-5)
    with pytest.raises(UserError, match="one label plane per head"):
        Trainer(TrainConfig(**dict(values, dataset="sift_flow", out=str(tmp_path / "one")))).run()


def test_eval_scores_the_geometric_head_of_a_two_headed_checkpoint(tmp_path, capsys):
    """`atrous eval --head geometric` on sift_flow_geometric: the geometric head's labels scored
    against the geometric masks, as counted by hand with NumPy."""
    from atrous.cli import main

    make_sift_flow(tmp_path / "data", {"trainval": ["a", "b"], "test": ["c", "d"]})
    out = tmp_path / "run"
    assert main(["train", "--model", "fcn8s", "--backbone", "resnet18", "--model-opt", "extra_heads={geometric: 3}",
                 "--dataset", "sift_flow_both", "--data-root", str(tmp_path / "data"), "--out", str(out),
                 "--iters", "2", "--batch-size", "2", "--crop-size", "16", "--eval-split", "test",
                 "--no-progress"]) == 0, capsys.readouterr().err
    scores = tmp_path / "geometric.json"
    assert main(["eval", "--checkpoint", str(out / "model.safetensors"), "--dataset", "sift_flow_geometric",
                 "--data-root", str(tmp_path / "data"), "--split", "test", "--head", "geometric",
                 "--precision", "fp32", "--json", str(scores), "--no-progress"]) == 0, capsys.readouterr().err
    import json

    metrics = json.loads(scores.read_text())
    model = atrous.load_checkpoint(str(out / "model.safetensors")).eval()
    test = SiftFlow(str(tmp_path / "data"), "test", labels="geometric")
    correct = labelled = 0
    for image, mask in test:
        x = (image.float()[None] / 255 - torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)) / torch.tensor(
            [0.229, 0.224, 0.225]).view(1, 3, 1, 1)
        with torch.no_grad():
            predicted = model(x, return_aux=True)["geometric"].argmax(1)[0]
        keep = mask != 255
        correct += int((predicted[keep] == mask[keep]).sum())
        labelled += int(keep.sum())
    assert metrics["pixel_accuracy"] == pytest.approx(correct / labelled)
    assert metrics["class_names"] == list(test.info.class_names)
    assert main(["eval", "--checkpoint", str(out / "model.safetensors"), "--dataset", "sift_flow_geometric",
                 "--data-root", str(tmp_path / "data"), "--split", "test", "--head", "depth", "--no-progress"]) == 2
    assert "--head depth" in capsys.readouterr().err
