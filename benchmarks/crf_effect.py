"""What a CRF does to a trained model: mIoU and trimap mIoU on a validation split without
CRF, with DenseCRF (pydensecrf's meaning; a few settings), and with a ConvCRF fitted on the
training split (the ConvCRF paper's decoupled training, `atrous fit-crf`).

    .venv/bin/python benchmarks/crf_effect.py --checkpoint runs/camvid/model.safetensors \
        [--dataset camvid] [--data-root ../shared/data/camvid] [--trimap 2 5 10]

Writes benchmarks/results/crf_effect.json and prints a table. Every row is what
`atrous eval --crf ... --trimap ...` prints for the same checkpoint.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile

import torch
from harness import CAMVID_DATA, RESULTS_DIR, clock, command_line, write_json

from atrous.checkpoints.checkpoint import load_checkpoint
from atrous.crf import DenseCRF
from atrous.data import build_dataset
from atrous.inference.evaluate import evaluate
from atrous.inference.refinement import build_crf
from atrous.training.crf_fit import fit_checkpoint_crf

# DenseCRF settings tried: pydensecrf's README example and DeepLab's published VOC setting
DENSE_SETTINGS = {
    "dense (pydensecrf example: 3/3, 80/13/10)": dict(pos_xy_std=3, pos_w=3, bi_xy_std=80, bi_rgb_std=13, bi_w=10),
    "dense (DeepLab VOC: 1/3, 67/3/4)": dict(pos_xy_std=1, pos_w=3, bi_xy_std=67, bi_rgb_std=3, bi_w=4),
    "dense (smoother: 3/3, 50/10/5)": dict(pos_xy_std=3, pos_w=3, bi_xy_std=50, bi_rgb_std=10, bi_w=5),
}


def row(name: str, metrics: dict, seconds: float) -> dict:
    return {
        "setting": name,
        "mIoU": metrics["mIoU"],
        "pixel_accuracy": metrics["pixel_accuracy"],
        "mean_accuracy": metrics["mean_accuracy"],
        "trimap": metrics.get("trimap", {}),
        "seconds": round(seconds, 1),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--dataset", default="camvid")
    parser.add_argument("--data-root", default=str(CAMVID_DATA))
    parser.add_argument("--split", default="val")
    parser.add_argument("--trimap", type=int, nargs="+", default=[2, 5, 10])
    parser.add_argument("--fit-iters", type=int, default=100)
    parser.add_argument("--fit-crop", type=int, default=256)
    parser.add_argument("--fit-images", type=int, default=None)
    parser.add_argument("--max-images", type=int, default=None, help="evaluate on the first N images only")
    parser.add_argument("--json", default=str(RESULTS_DIR / "crf_effect.json"))
    args = parser.parse_args()

    model = load_checkpoint(args.checkpoint)
    dataset = build_dataset(args.dataset, args.split, data_root=args.data_root)
    if args.max_images:
        from atrous.inference.evaluate import FirstItems

        dataset = FirstItems(dataset, args.max_images)
    rows = []

    def run(name: str, crf: torch.nn.Module | None) -> None:
        seconds, metrics = clock(lambda: evaluate(model, dataset, batch_size=1, crf=crf, trimap_widths=args.trimap,
                                                  progress=True))
        rows.append(row(name, metrics, seconds))
        print(f"{name}: mIoU {metrics['mIoU']:.4f}", flush=True)

    run("none", None)
    for name, params in DENSE_SETTINGS.items():
        run(name, DenseCRF(**params).eval())
    with tempfile.TemporaryDirectory() as folder:
        fitted = os.path.join(folder, "fitted.safetensors")
        fit_seconds, summary = clock(lambda: fit_checkpoint_crf(
            args.checkpoint, args.dataset, out=fitted, kind="conv", data_root=args.data_root, iters=args.fit_iters,
            crop_size=args.fit_crop, max_images=args.fit_images, progress=True))
        fitted_model = load_checkpoint(fitted)
        run("conv (defaults)", build_crf("conv", model))
        run(f"conv (fitted, {args.fit_iters} its)", build_crf("conv", fitted_model))
        rows[-1]["fit_seconds"] = round(fit_seconds, 1)
        rows[-1]["fit"] = {k: v for k, v in summary.items() if isinstance(v, int | float | str)}

    widths = [str(w) for w in args.trimap]
    print(f"\n{'setting':<44} {'mIoU':>6} {'pix acc':>7} " + " ".join(f"{'tri' + w:>6}" for w in widths))
    for r in rows:
        tri = " ".join(f"{100 * r['trimap'][w]:6.2f}" for w in widths)
        print(f"{r['setting']:<44} {100 * r['mIoU']:6.2f} {100 * r['pixel_accuracy']:7.2f} {tri}")
    result = {
        "command": command_line(__file__),
        "checkpoint": args.checkpoint,
        "dataset": args.dataset,
        "split": args.split,
        "images": len(dataset),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads",
        "rows": rows,
    }
    write_json(args.json, result)
    print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
