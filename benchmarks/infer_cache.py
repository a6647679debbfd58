"""`atrous.infer(model, x)` on a plain model in a loop against a model prepared once
(`prepare(model)` then `atrous.infer`): what the hidden preparation (the copy, batch-norm
folding and its check) costs per call. Since the prepared copy is cached on the model
(atrous.inference.infer.prepare), the two should be the same.

    .venv/bin/python benchmarks/infer_cache.py [--size 360x480] [--threads 1] [--repeats 5]

Model: torchvision's deeplabv3_resnet50 (21 classes, random weights, seed 0) as atrous'
(`atrous.from_torchvision`), default precision ("auto"). Input: one random normalised image. Timing: a warm-up
of each path, then `--repeats` interleaved rounds; medians. Writes
benchmarks/results/infer_cache.json (a row per run, keyed by the label `--label`).
"""

from __future__ import annotations

import argparse
import json
from functools import partial

import torch
from harness import RESULTS_DIR, command_line, cpu_name, interleaved, write_json

import atrous
from atrous.inference.infer import prepare
from atrous.runtime.device import resolve_precision

RESULTS = RESULTS_DIR / "infer_cache.json"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", default="360x480")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--label", default="now", help="the row's name (e.g. before / after a change)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    height, width = (int(v) for v in args.size.lower().split("x"))
    import torchvision.models.segmentation as tvs

    torch.manual_seed(0)
    tv = tvs.deeplabv3_resnet50(weights=None, weights_backbone=None, num_classes=21, aux_loss=False)
    model = atrous.from_torchvision("deeplabv3_resnet50", tv.state_dict()).eval()
    x = torch.randn(1, 3, height, width)
    prepared = prepare(model)
    paths = {"atrous.infer(model, x)": partial(atrous.infer, model, x),
             "atrous.infer(prepare(model), x)": partial(atrous.infer, prepared, x)}
    rounds = interleaved(paths, args.repeats, warmup=1)
    row = {"label": args.label, "size": args.size, "threads": args.threads, "repeats": args.repeats,
           "precision": resolve_precision("auto", torch.device("cpu")), "cpu": cpu_name(bf16=True),
           "seconds": rounds.medians, "times": rounds.times}
    for name, seconds in rounds.medians.items():
        print(f"| {args.label} | {name} | {row['precision']} | {seconds:.3f} s |")
    earlier = json.loads(RESULTS.read_text()) if RESULTS.is_file() else {"rows": []}
    rows = [r for r in earlier["rows"] if r["label"] != args.label] + [row]
    write_json(RESULTS, {"command": command_line(__file__, python=True), "rows": rows})


if __name__ == "__main__":
    main()
