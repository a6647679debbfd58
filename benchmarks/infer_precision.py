"""The fast default against the exact path: label agreement, mIoU and time on CamVid val.

    .venv/bin/python benchmarks/infer_precision.py --checkpoint FILE [--data-root DIR]
        [--max-images N] [--threads 2] [--json benchmarks/results/infer_precision.json]

Runs one checkpoint through atrous.infer twice per image, interleaved: `precision="fp32"`
(the model exactly) and `precision="auto"` (batch norm folded; bf16 autocast and
channels-last where the CPU has native bf16). Reports the fraction of pixels (all of them,
void included) whose label is the same under both, the mIoU of each against the ground
truth, and the median time per image of each with their ratio (auto / fp32). Prints a
table and writes JSON.
"""

from __future__ import annotations

import argparse
import statistics

import torch
from harness import RESULTS_DIR, clock, machine_word, write_json

import atrous
from atrous.checkpoints.meta import normalisation
from atrous.data import build_dataset, eval_transform
from atrous.inference.infer import prepare
from atrous.metrics import ConfusionMatrix


def measure(checkpoint: str, data_root: str | None, max_images: int | None) -> dict:
    model = atrous.load_checkpoint(checkpoint).eval()
    dataset = build_dataset("camvid", "val", data_root=data_root)
    count = min(max_images or len(dataset), len(dataset))
    transform = eval_transform(*normalisation(model.meta))
    paths = {"fp32": prepare(model, "fp32"), "auto": prepare(model, "auto")}
    matrices = {name: ConfusionMatrix(model.num_classes, dataset.info.ignore_index) for name in paths}
    seconds: dict[str, list[float]] = {name: [] for name in paths}
    same = total = 0
    for index in range(count):
        raw, mask = dataset[index]
        image = transform(raw, mask, None)[0][None]
        labels = {}
        for name, net in paths.items():
            took, labels[name] = clock(lambda net=net, image=image: atrous.infer(net, image).argmax(1))
            seconds[name].append(took)
            matrices[name].update(labels[name], mask[None])
        same += int((labels["fp32"] == labels["auto"]).sum())
        total += labels["fp32"].numel()
    result = {
        "checkpoint": checkpoint,
        "images": count,
        "auto_resolves_to": paths["auto"].precision,
        "label_agreement": same / total,
        "threads": torch.get_num_threads(),
        "machine": machine_word(),
    }
    for name in paths:
        result[name] = {"mIoU": matrices[name].compute()["mIoU"], "median_s": statistics.median(seconds[name])}
    result["time_ratio_auto_over_fp32"] = result["auto"]["median_s"] / result["fp32"]["median_s"]
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--data-root")
    parser.add_argument("--max-images", type=int)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", default=str(RESULTS_DIR / "infer_precision.json"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    result = measure(args.checkpoint, args.data_root, args.max_images)
    print(f"{result['images']} CamVid val images, auto = folded batch norm + {result['auto_resolves_to']}")
    print(f"{'path':<6} {'mIoU':>7} {'median s':>9}")
    for name in ("fp32", "auto"):
        print(f"{name:<6} {100 * result[name]['mIoU']:7.2f} {result[name]['median_s']:9.3f}")
    print(f"label agreement {100 * result['label_agreement']:.3f} %, time auto/fp32 "
          f"{result['time_ratio_auto_over_fp32']:.2f}")
    write_json(args.json, result)
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
