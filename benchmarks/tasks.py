"""The binary and multilabel tasks shown on data (issue 33, item 5), short runs on a CPU:

- ISBI 2012 trained as `--task binary` (one logit, sigmoid, BCE) against today's two-class
  softmax (`--task multiclass`, cross-entropy), same U-Net, recipe, seed and held-out slices
  25-29; both scored the same way: a two-class confusion matrix (the binary model's class is
  sigmoid > 0.5), cell (foreground) and membrane IoU, pixel error;
- a multilabel run on the synthetic scenes' overlapping labels (a boat is a vehicle and on
  water, a car a vehicle and man-made): per-label IoU and Dice of `atrous eval`.

    .venv/bin/python benchmarks/tasks.py --threads 2            # both, ~15 minutes on 2 shared cores
    .venv/bin/python benchmarks/tasks.py --only isbi --iters 50  # a quick look

Writes its runs into benchmarks/results/tasks.json (each with its command; the file's other runs
kept) and prints a table; the figures go by hand into
docs/benchmarks.md ("Binary and multilabel tasks").
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile

import torch
from harness import RESULTS_DIR, command_line, cpu_name, write_json

ISBI_RECIPE = dict(model="unet", dataset="isbi2012", model_options={"base_channels": 8, "batch_norm": True},
                   crop_size=128, batch_size=4, optimizer="adamw", lr=1e-3, scale_min=0.75, scale_max=1.25,
                   eval_split="val", loss="ce", seed=0)
MULTILABEL_RECIPE = dict(model="unet", dataset="synthetic", task="multilabel", synthetic_size=96,
                         synthetic_length=200, model_options={"base_channels": 8, "batch_norm": True},
                         crop_size=96, batch_size=4, optimizer="adamw", lr=1e-3, loss="ce", seed=0)


def two_class_scores(model, dataset) -> dict[str, float]:
    """Membrane and cell IoU, mIoU and pixel error of `model` on `dataset` (two-class masks),
    a binary model's class being sigmoid > its threshold."""
    from atrous.checkpoints.meta import normalisation
    from atrous.data import eval_transform
    from atrous.data.tasks import predicted, task_of, threshold_of
    from atrous.inference.infer import infer
    from atrous.metrics import ConfusionMatrix

    matrix, normalise = ConfusionMatrix(2), eval_transform(*normalisation(model.meta))
    task, threshold = task_of(model.meta), threshold_of(model.meta)
    for index in range(len(dataset)):
        image, mask = normalise(*dataset[index], None)
        pred = predicted(infer(model, image[None], precision="fp32"), task, threshold)
        matrix.update(pred[:, 0] if task == "binary" else pred, mask[None])
    result = matrix.compute()
    membrane, cell = result["per_class_iou"]
    return {"cell_iou": cell, "membrane_iou": membrane, "mIoU": result["mIoU"],
            "pixel_error": 1 - result["pixel_accuracy"]}


def run_isbi(iters: int, out: str) -> dict[str, dict]:
    from atrous import load_checkpoint
    from atrous.data import build_dataset
    from atrous.training.trainer import TrainConfig, train

    held_out = build_dataset("isbi2012", "val")  # slices 25-29, two classes (membrane, cell)
    rows = {}
    for task in ("multiclass", "binary"):
        result = train(TrainConfig(**ISBI_RECIPE, task=task, iters=iters, out=os.path.join(out, task),
                                   progress=False, checkpoint_every=iters))
        model = load_checkpoint(os.path.join(out, task, "model.safetensors"))
        rows[f"isbi2012/{task}"] = {"task": task, "outputs": model.num_classes, "iters": iters,
                                    "train_seconds": result["train"]["seconds"],
                                    **two_class_scores(model, held_out)}
    return rows


def run_multilabel(iters: int, out: str) -> dict[str, dict]:
    from atrous.training.trainer import TrainConfig, train

    result = train(TrainConfig(**MULTILABEL_RECIPE, iters=iters, out=os.path.join(out, "multilabel"), progress=False,
                               checkpoint_every=iters))
    val = result["val"]
    per_label = {name: {"iou": iou, "dice": dice} for name, iou, dice in
                 zip(val["class_names"], val["per_class_iou"], val["per_label_dice"], strict=True)}
    return {"synthetic/multilabel": {"iters": iters, "train_seconds": result["train"]["seconds"],
                                     "mIoU": val["mIoU"], "mean_dice": val["mean_dice"], "labels": per_label}}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--iters", type=int, default=150, help="ISBI iterations per run")
    parser.add_argument("--multilabel-iters", type=int, default=150)
    parser.add_argument("--only", choices=("isbi", "multilabel"))
    parser.add_argument("--out", help="run folders (default: a temporary folder)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    rows: dict[str, dict] = {}
    with tempfile.TemporaryDirectory() as scratch:
        out = args.out or scratch
        if args.only in (None, "isbi"):
            rows.update(run_isbi(args.iters, out))
        if args.only in (None, "multilabel"):
            rows.update(run_multilabel(args.multilabel_iters, out))
    cpu = cpu_name()
    print(f"{'run':<24} {'s':>6}  scores (fp32, {cpu}, {args.threads} threads)")
    for name, row in rows.items():
        scores = {k: round(v, 4) for k, v in row.items() if isinstance(v, float) and k != "train_seconds"}
        print(f"{name:<24} {row['train_seconds']:>6.0f}  {scores}")
    path = RESULTS_DIR / "tasks.json"  # runs of other commands (--only) are kept
    kept = json.loads(path.read_text())["runs"] if path.exists() else {}
    for row in rows.values():
        row.update(command=command_line(__file__), cpu=cpu, threads=args.threads, precision="fp32")
    write_json(path, {"runs": {**kept, **rows}})
    return 0


if __name__ == "__main__":
    sys.exit(main())
