"""What a trained start buys: fine-tuning a CamVid model onto another class set against the
same run from scratch, judged on the held-out sequence 0006R0.

    .venv/bin/python benchmarks/finetune_camvid.py [--data-root ../shared/data/camvid]
        [--work /tmp/atrous_finetune] [--source-iters 600] [--iters 150 450] [--threads 2]

1. The source: DeepLab v3+ ResNet-18 trained on seq_train's 11 classes
   (configs/camvid_best/heldout_v3plus_sqrtmf_600.yaml, --source-iters iterations).
2. The target task: CamVid's classes merged into five (sky; structure = building, pole,
   sign, fence; ground = road, pavement; vegetation = tree; dynamic = car, pedestrian,
   bicyclist), written as a `folder` dataset under --work (train: seq_train's frames,
   val: 0006R0's; the data stays outside the repository).
3. For each budget in --iters: `--init-from` the source (the classifier starts anew, every
   other tensor loaded) against the same recipe from scratch; held-out mIoU and seconds.
Writes benchmarks/results/finetune_camvid.json and prints a table; the CPU is named there.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch
from harness import CAMVID_DATA, RESULTS_DIR, ROOT, clock, command_line, cpu_name, write_json
from PIL import Image

sys.path.insert(0, str(ROOT))

from atrous.data import build_dataset  # noqa: E402
from atrous.training import TrainConfig, train  # noqa: E402

MERGED = {  # new class -> CamVid classes
    "sky": ("Sky",),
    "structure": ("Building", "Pole", "SignSymbol", "Fence"),
    "ground": ("Road", "Pavement"),
    "vegetation": ("Tree",),
    "dynamic": ("Car", "Pedestrian", "Bicyclist"),
}
RECIPE = dict(model="deeplab_v3plus", backbone="resnet18", batch_size=8, crop_size=256, scale_min=0.75,
              scale_max=1.5, optimizer="adamw", weight_decay=1e-4, precision="auto", channels_last=True,
              checkpoint_every=10_000, eval_batch_size=2, progress=False)


def merged_folder(camvid: str, out: Path) -> Path:
    """The five-class folder dataset (train: seq_train, val: seq_test = 0006R0)."""
    if (out / "classes.json").is_file():
        return out
    names = build_dataset("camvid", "seq_train", data_root=camvid).info.class_names
    lut = np.full(256, 255, np.uint8)
    for new, (_, old) in enumerate(MERGED.items()):
        for name in old:
            lut[names.index(name)] = new
    for split, source in (("train", "seq_train"), ("val", "seq_test")):
        dataset = build_dataset("camvid", source, data_root=camvid)
        (out / split / "images").mkdir(parents=True, exist_ok=True)
        (out / split / "masks").mkdir(parents=True, exist_ok=True)
        for index in range(len(dataset)):
            image, mask = dataset[index]
            Image.fromarray(image.permute(1, 2, 0).numpy()).save(out / split / "images" / f"{index:04d}.png")
            Image.fromarray(lut[mask.numpy().clip(0, 255).astype(np.uint8)]).save(
                out / split / "masks" / f"{index:04d}.png")
    (out / "classes.json").write_text(json.dumps({"classes": list(MERGED)}))
    return out


def run(cfg: TrainConfig) -> dict:
    wall, result = clock(lambda: train(cfg))
    return {"miou": result[cfg.eval_split]["mIoU"], "per_class_iou": result[cfg.eval_split]["per_class_iou"],
            "train_seconds": result["train"]["seconds"], "wall_seconds": round(wall, 1),
            "precision": result["train"]["precision"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-root", default=str(CAMVID_DATA))
    parser.add_argument("--work", type=Path, default=Path("/tmp/atrous_finetune"))
    parser.add_argument("--source-iters", type=int, default=600)
    parser.add_argument("--iters", type=int, nargs="+", default=[150, 450])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", type=Path, default=RESULTS_DIR / "finetune_camvid.json")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    data = merged_folder(args.data_root, args.work / "camvid_merged")
    source_dir = args.work / "source"
    rows = {}
    if (source_dir / "metrics.json").is_file():  # trained by an earlier run of this script
        saved = json.loads((source_dir / "metrics.json").read_text())
        rows["source"] = {"miou": saved["seq_test"]["mIoU"], "per_class_iou": saved["seq_test"]["per_class_iou"],
                          "train_seconds": saved["train"]["seconds"], "precision": saved["train"]["precision"]}
    else:
        rows["source"] = run(TrainConfig(**RECIPE, dataset="camvid", data_root=args.data_root, train_split="seq_train",
                                         eval_split="seq_test", class_weights="sqrt_median_frequency", lr=1e-3,
                                         iters=args.source_iters, out=str(source_dir), overwrite=True))
    target = dict(RECIPE, dataset="folder", data_root=str(data), eval_split="val", class_weights="sqrt_median_frequency")
    for iters in args.iters:
        rows[f"finetune_{iters}"] = run(TrainConfig(**target, iters=iters, lr=3e-4, overwrite=True,
                                                    init_from=str(source_dir / "model.safetensors"),
                                                    out=str(args.work / f"finetune_{iters}")))
        rows[f"scratch_{iters}"] = run(TrainConfig(**target, iters=iters, lr=1e-3, overwrite=True,
                                                   out=str(args.work / f"scratch_{iters}")))
        print(json.dumps({k: (v["miou"], v["train_seconds"]) for k, v in rows.items()}), flush=True)
    summary = {"command": command_line(__file__), "cpu": cpu_name(bf16=True, fallback="?"),
               "threads": args.threads, "source_iters": args.source_iters, "classes": MERGED,
               "judged_on": "0006R0 (seq_test), never seen by the source or the target runs", "rows": rows}
    write_json(args.json, summary)
    print(f"{'run':<16}{'held-out mIoU':>15}{'train s':>10}")
    for name, row in rows.items():
        print(f"{name:<16}{row['miou']:>15.3f}{row['train_seconds']:>10.0f}")


if __name__ == "__main__":
    main()
